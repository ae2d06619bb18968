from __future__ import annotations

from django.contrib.sessions.middleware import SessionMiddleware


class MySessionMiddleware(SessionMiddleware):
    """A project's own session middleware: django_sse's check must accept it."""
