"""Settings of the example project: a report job streaming its progress to the browser.

Defaults need nothing but Python: SQLite in this directory and the in-memory channel layer (the
server then finds the worker's events by polling the database every POLL_SECONDS).

Environment variables:
- ``DATABASE_URL=postgres://user:password@host:port/name``: use PostgreSQL instead of SQLite.
- ``REDIS_URL=redis://host:port/0``: carry events between processes through Redis.
- ``REPORT_STEP_SECONDS``: the pause between two steps of the report (default 0.5).
- ``DJANGO_DEBUG=0``, ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS=a,b``: the usual.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent

# A demo: the key is public, which is fine on 127.0.0.1 and nowhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-django_sse-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    # First, so that runserver is Daphne's (ASGI, streaming) rather than staticfiles' (WSGI).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_sse",
    "django_tasks_db",
    "example_project.reports",
]
if find_spec("django.tasks") is None:
    # Django < 6.0: the task framework comes from the django-tasks backport.
    INSTALLED_APPS.insert(INSTALLED_APPS.index("django_tasks_db"), "django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/") or "django_sse_example",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
    }


DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL.startswith(("postgres://", "postgresql://")):
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # SQLITE_PATH: another file (the browser tests use one per run).
            "NAME": os.environ.get("SQLITE_PATH") or BASE_DIR / "db.sqlite3",
            "OPTIONS": {
                # The server and the worker both write: take the write lock when a transaction
                # begins (no "database is locked" on upgrade) and wait for it rather than fail.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                # WAL lets the server read (page loads, the stream poll) while the worker writes.
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # REDIS_LAYER=pubsub picks the pub/sub layer.
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if os.environ.get("REDIS_LAYER") == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            # redis-py 8 times out idle sockets after 5 s, which breaks the layer's blocking
            # receive (channels_redis issue 422): wait without a timeout.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    # One process only: events from the worker reach the server through the database poll.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DJANGO_SSE: dict[str, Any] = {
    "POLL_SECONDS": 0.5,
    # SSE_CORS_ALLOWED_ORIGINS: comma-separated origins whose pages may read the streams.
    "CORS_ALLOWED_ORIGINS": [
        origin.strip()
        for origin in os.environ.get("SSE_CORS_ALLOWED_ORIGINS", "").split(",")
        if origin.strip()
    ],
}

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# Seconds between two steps of the demo report.
REPORT_STEP_SECONDS = float(os.environ.get("REPORT_STEP_SECONDS", "0.5"))

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {
        # propagate=False: daphne's command line also logs through the root logger.
        "django_sse": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django_tasks_db": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "example_project": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
