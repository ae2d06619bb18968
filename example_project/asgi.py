"""ASGI entry point: ``daphne example_project.asgi:application`` (``manage.py runserver`` uses
it too, because ``daphne`` comes first in INSTALLED_APPS)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

application = get_asgi_application()
