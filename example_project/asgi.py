"""ASGI entry point: ``daphne example_project.asgi:application`` (``manage.py runserver`` uses
it too, because ``daphne`` comes first in INSTALLED_APPS)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from django_sse.asgi import DirectWriteMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after the app registry is ready)

if settings.DEBUG:
    # What runserver does: serve static files (django_sse.js, the page's script) in DEBUG.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)

# Live events written straight to the server (see "Deployment" in the docs).
application = DirectWriteMiddleware(django_application)
