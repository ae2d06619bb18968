"""Django settings of every Django server in the benchmark (ours, and the Django peers).

Chosen by environment variables set by ``harness.py``:
BENCH_DB        "sqlite:/path/to/file" or "pg:DBNAME" (127.0.0.1:5432, user postgres)
BENCH_LAYER     "mem" | "core" | "pubsub"
BENCH_PREFIX    Redis channel-layer prefix shared by the server and publisher processes
BENCH_REDIS     redis://127.0.0.1:6379/0
BENCH_REPLAY_PAGE_SIZE   optional: DJANGO_SSE["REPLAY_PAGE_SIZE"] (unset: the app's default)
"""

from __future__ import annotations

import os

SECRET_KEY = "django_sse-benchmarks"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "benchmarks.urls"
ASGI_APPLICATION = "benchmarks.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_sse",
    "django_eventstream",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_db = os.environ.get("BENCH_DB", "sqlite:/tmp/django_sse_bench.sqlite3")
if _db.startswith("pg:"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _db[3:],
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _db.split(":", 1)[1],
            # WAL: readers (the stream database thread) do not wait for the publisher's writes.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
_layer = os.environ.get("BENCH_LAYER", "mem")
_prefix = os.environ.get("BENCH_PREFIX", "django_sse_bench")
if _layer == "mem":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if _layer == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": _prefix,
            },
        }
    }

# The app's defaults (POLL_SECONDS 1.0, HEARTBEAT_SECONDS 15 ...), except that
# BENCH_REPLAY_PAGE_SIZE, when set, overrides REPLAY_PAGE_SIZE (to compare page sizes).
# Every load-client connection is the same user's (one session cookie): lift the per-visitor
# stream cap (20 by default), or all but 20 of the 1,000+ subscribers get 429.
DJANGO_SSE: dict[str, object] = {"MAX_STREAMS_PER_IDENTITY": 1_000_000}
if os.environ.get("BENCH_REPLAY_PAGE_SIZE"):
    DJANGO_SSE["REPLAY_PAGE_SIZE"] = int(os.environ["BENCH_REPLAY_PAGE_SIZE"])

# django-eventstream: database storage on; Redis pub/sub so that a publisher process reaches
# the server (its documented multi-process mode).
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
if os.environ.get("BENCH_EVENTSTREAM_REDIS", "1") == "1":
    EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
