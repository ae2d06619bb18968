from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from django_sse.asgi import DirectWriteMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

application = get_asgi_application()
if os.environ.get("BENCH_DIRECT", "1") == "1":
    # The deployment the docs recommend; BENCH_DIRECT=0 measures Django's response loop alone.
    application = DirectWriteMiddleware(application)
