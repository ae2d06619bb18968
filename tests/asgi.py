from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from django_sse.asgi import DirectWriteMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = DirectWriteMiddleware(get_asgi_application())
