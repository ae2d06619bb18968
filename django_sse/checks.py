"""System checks, registered in ``DjangoSseConfig.ready()``; every ID is documented in
``docs/checks.rst``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any, cast

import django
from channels.layers import channel_layers
from django.apps import AppConfig
from django.apps import apps as app_registry
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from django_sse.conf import DEFAULTS, conf

_ORIGIN_RE = re.compile(r"\Ahttps?://[^/\s?#]+\Z")

_NUMBERS = {
    "HEARTBEAT_SECONDS": (float, int),
    "POLL_SECONDS": (float, int),
    "PROGRESS_INTERVAL_SECONDS": (float, int),
    "CANCEL_CHECK_SECONDS": (float, int),
    "RETENTION_DAYS": (float, int),
    "RETRY_MILLISECONDS": (int,),
    "MAX_DATA_BYTES": (int,),
    "REPLAY_PAGE_SIZE": (int,),
    "MAX_BUFFERED_BYTES": (int,),
    "SEND_TIMEOUT_SECONDS": (float, int),
    "MAX_STREAMS_PER_IDENTITY": (int,),
    "RESUME_MAX_AGE_SECONDS": (float, int),
}

_BOOLEANS = ("METRICS",)


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(settings, "DJANGO_SSE", {})
    if not isinstance(value, dict):
        return [
            Error(
                f"DJANGO_SSE must be a dict, not {type(value).__name__}.",
                hint="Set DJANGO_SSE = {...} with the keys listed in django_sse's README.",
                id="django_sse.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in sorted(set(value) - set(DEFAULTS)):
        errors.append(
            Error(
                f"DJANGO_SSE has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="django_sse.E001",
            )
        )
    for key, types in _NUMBERS.items():
        if key not in value:
            continue
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, types) or item <= 0:
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be a positive number, not {item!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    for key in _BOOLEANS:
        if key in value and not isinstance(value[key], bool):
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be True or False, not {value[key]!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    for key in ("CHANNEL_LAYER", "GROUP_PREFIX"):
        if key in value and (not isinstance(value[key], str) or not value[key]):
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be a non-empty string, not {value[key]!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    origins = value.get("CORS_ALLOWED_ORIGINS", [])
    if not isinstance(origins, (list, tuple, set, frozenset)) or not all(
        isinstance(o, str) and _ORIGIN_RE.match(o) for o in origins
    ):
        errors.append(
            Error(
                f"DJANGO_SSE['CORS_ALLOWED_ORIGINS'] must be a list of origins such as "
                f"'https://app.example.com', not {origins!r}.",
                hint="An origin is a scheme, a host and an optional port, with no path.",
                id="django_sse.E001",
            )
        )
    authorize = value.get("AUTHORIZE")
    if authorize is not None:
        try:
            func = import_string(authorize) if isinstance(authorize, str) else authorize
        except ImportError as exc:
            func = None
            reason = str(exc)
        else:
            reason = "it is not callable"
        if not callable(func):
            errors.append(
                Error(
                    f"DJANGO_SSE['AUTHORIZE'] cannot be used: {reason}.",
                    hint="Give a callable (request, job) -> bool, or its dotted path.",
                    id="django_sse.E002",
                )
            )
    return errors


@register(Tags.compatibility)
def check_channel_layer(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if conf.CHANNEL_LAYER not in layers:
        return [
            Warning(
                f"No channel layer {conf.CHANNEL_LAYER!r} is configured in CHANNEL_LAYERS.",
                hint=(
                    "Streams then learn of new events only by polling the database every "
                    "POLL_SECONDS. Add CHANNEL_LAYERS = {'default': {'BACKEND': "
                    "'channels.layers.InMemoryChannelLayer'}} for one process, or "
                    "channels_redis for several."
                ),
                id="django_sse.W001",
            )
        ]
    # Channels' get_channel_layer() answers None, silently, when the layer's class raises while
    # it is built (a missing key in its CONFIG, say): streams would then poll without a word.
    try:
        channel_layers.make_backend(conf.CHANNEL_LAYER)
    except Exception as exc:
        return [
            Warning(
                f"The channel layer {conf.CHANNEL_LAYER!r} cannot be built: {exc!r}.",
                hint=(
                    "Channels then gives no layer at all, and streams learn of new events only "
                    "by polling the database every POLL_SECONDS. Fix the layer's BACKEND or "
                    "CONFIG in CHANNEL_LAYERS."
                ),
                id="django_sse.W009",
            )
        ]
    return []


@register(Tags.compatibility)
def check_middleware(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", []) or [])
    errors: list[CheckMessage] = []
    session = "django.contrib.sessions.middleware.SessionMiddleware"
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    if not any(_is_subclass(path, session) for path in middleware):
        errors.append(
            Error(
                "django_sse needs SessionMiddleware: streams are authorized by session.",
                hint=f"Add {session!r} to MIDDLEWARE.",
                id="django_sse.E003",
            )
        )
    if not any(_is_subclass(path, auth) for path in middleware):
        errors.append(
            Error(
                "django_sse needs AuthenticationMiddleware to tell a job's owner.",
                hint=f"Add {auth!r} to MIDDLEWARE, after SessionMiddleware.",
                id="django_sse.E004",
            )
        )
    return errors


@register(Tags.compatibility)
def check_session_engine(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """With signed cookies the session key is the cookie itself: it changes whenever the
    session does (an anonymous visitor loses their jobs), and the server keeps no session a
    logout could delete, so it cannot end an open stream."""
    from django.contrib.sessions.backends.signed_cookies import SessionStore as SignedCookies

    try:
        store = import_module(settings.SESSION_ENGINE).SessionStore
    except (ImportError, AttributeError):
        return []  # Django itself fails loudly on the first request
    if not (isinstance(store, type) and issubclass(store, SignedCookies)):
        return []
    return [
        Error(
            "django_sse cannot authorize streams with the signed_cookies session engine: "
            "the server keeps no session, so a logout cannot end an open stream.",
            hint=(
                "Set SESSION_ENGINE to 'django.contrib.sessions.backends.db', "
                "'django.contrib.sessions.backends.cache' or "
                "'django.contrib.sessions.backends.cached_db'."
            ),
            id="django_sse.E005",
        )
    ]


@register(Tags.compatibility)
def check_metrics(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Metrics asked for and prometheus_client missing: nothing would be exported (imported
    only when the setting is on, see metrics.py)."""
    value = getattr(settings, "DJANGO_SSE", {})
    if not isinstance(value, dict) or value.get("METRICS") is not True:
        return []
    try:
        import_module("prometheus_client")
    except ImportError as exc:
        return [
            Error(
                f"DJANGO_SSE['METRICS'] is on, but prometheus_client cannot be imported ({exc}).",
                hint="Install django-sse-jobs[metrics] (prometheus_client 0.20 or later), or "
                "set DJANGO_SSE['METRICS'] to False.",
                id="django_sse.E006",
            )
        ]
    return []


@register(Tags.compatibility)
def check_daphne(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    apps = list(settings.INSTALLED_APPS)
    messages: list[CheckMessage] = []
    if "daphne" not in apps:
        messages.append(
            Warning(
                "'daphne' is not in INSTALLED_APPS, so runserver serves WSGI and cannot stream.",
                hint="Add 'daphne' at the top of INSTALLED_APPS and set ASGI_APPLICATION.",
                id="django_sse.W002",
            )
        )
    elif "django.contrib.staticfiles" in apps and apps.index("daphne") > apps.index(
        "django.contrib.staticfiles"
    ):
        messages.append(
            Warning(
                "'daphne' comes after 'django.contrib.staticfiles' in INSTALLED_APPS, so "
                "staticfiles' runserver wins and streams do not work under runserver.",
                hint="Move 'daphne' above 'django.contrib.staticfiles'.",
                id="django_sse.W003",
            )
        )
    if not getattr(settings, "ASGI_APPLICATION", None):
        messages.append(
            Warning(
                "ASGI_APPLICATION is not set.",
                hint="Set ASGI_APPLICATION = 'yourproject.asgi.application'.",
                id="django_sse.W004",
            )
        )
    return messages


def _is_subclass(path: str, base_path: str) -> bool:
    if path == base_path:
        return True
    try:
        cls = import_string(path)
        base = import_string(base_path)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, base)


@register(Tags.compatibility)
def check_redis_timeout(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """redis-py 8 gives sockets a 5 s timeout, the core Redis layer blocks 5 s in receive():
    an idle receive then fails every 5 s (channels_redis issue 422)."""
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(conf.CHANNEL_LAYER) or {}
    if layer.get("BACKEND") != "channels_redis.core.RedisChannelLayer":
        return []
    try:
        import redis
    except ImportError:
        return []
    if int(redis.__version__.split(".")[0]) < 8:
        return []
    hosts = (layer.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
    if all(
        isinstance(h, dict) and "socket_timeout" in h and h["socket_timeout"] is None for h in hosts
    ):
        return []
    return [
        Warning(
            f"The Redis channel layer {conf.CHANNEL_LAYER!r} runs on redis-py "
            f"{redis.__version__}, whose 5 s socket timeout makes idle receive() calls fail.",
            hint=(
                'Give every host as a dict with "socket_timeout": None, e.g. '
                '{"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}.'
            ),
            id="django_sse.W005",
        )
    ]


@register(Tags.compatibility)
def check_buffer_size(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """A stream's inbox and replay pages hold a quarter of MAX_BUFFERED_BYTES each: an event
    larger than that never waits in an inbox (it is read back from the database every time)."""
    try:
        quarter, largest = conf.MAX_BUFFERED_BYTES // 4, conf.MAX_DATA_BYTES
    except (TypeError, ValueError):
        return []  # E001 says what is wrong with the values
    if quarter >= largest:
        return []
    return [
        Warning(
            f"DJANGO_SSE['MAX_BUFFERED_BYTES'] ({conf.MAX_BUFFERED_BYTES}) is less than 4 times "
            f"DJANGO_SSE['MAX_DATA_BYTES'] ({largest}): a stream's inbox cannot hold one of the "
            f"largest events, which are read back from the database for every stream.",
            hint=f"Set MAX_BUFFERED_BYTES to {4 * largest} or more, or lower MAX_DATA_BYTES.",
            id="django_sse.W006",
        )
    ]


# The immediate backends of Django's task framework (Django 6) and of its backport (5.2).
_IMMEDIATE_BACKENDS = (
    "django.tasks.backends.immediate.ImmediateBackend",
    "django_tasks.backends.immediate.ImmediateBackend",
)


def _overridden(name: str) -> bool:
    # LazySettings.is_overridden() (public, documented) is missing from django-stubs.
    return bool(cast(Any, settings).is_overridden(name))


def _installs_task_apps() -> bool:
    """Whether INSTALLED_APPS holds the backport or a backend's app (``django_tasks_db``...):
    on Django 6, where ``django.tasks`` is no app, a backend's app is the only sign."""
    roots = {str(app).split(".")[0] for app in settings.INSTALLED_APPS}
    return any(root.startswith("django_tasks") for root in roots)


def _default_task_backend() -> str | None:
    """The dotted path of the task framework's default backend, if the project uses the
    framework (the backport or a backend's app is installed, or ``TASKS`` is set); else
    None."""
    if not (_installs_task_apps() or _overridden("TASKS")):
        return None
    tasks = getattr(settings, "TASKS", None)
    if not tasks:
        # Both frameworks run tasks in the caller when TASKS is not set.
        return _IMMEDIATE_BACKENDS[0] if django.VERSION >= (6,) else _IMMEDIATE_BACKENDS[1]
    if not isinstance(tasks, dict) or not isinstance(tasks.get("default"), dict):
        return None  # the framework's own checks report it
    backend = tasks["default"].get("BACKEND")
    return backend if isinstance(backend, str) else None


@register(Tags.compatibility)
def check_task_backend(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """The immediate task backend runs a task inside the request that enqueues it: the job is
    over before its page opens, and the page shows no live progress."""
    backend = _default_task_backend()
    if backend is None or not any(_is_subclass(backend, base) for base in _IMMEDIATE_BACKENDS):
        return []
    return [
        Warning(
            f"The default task backend ({backend}) runs each task inside the request that "
            f"enqueues it: a job started that way has finished before its page opens, which "
            f"shows no live progress.",
            hint="Use a backend with a worker, e.g. TASKS = {'default': {'BACKEND': "
            "'django_tasks_db.DatabaseBackend'}} and run 'manage.py db_worker'.",
            id="django_sse.W007",
        )
    ]


# The assets {% django_sse_assets %} links to.
ASSETS = ("django_sse/django_sse.js", "django_sse/django_sse.css")


@register(Tags.compatibility)
def check_static_assets(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """The client's script and stylesheet must be findable, or pages show a dead bar."""
    # By its app config's path too ("django.contrib.staticfiles.apps.StaticFilesConfig").
    if app_registry.is_installed("django.contrib.staticfiles"):
        missing = [path for path in ASSETS if not finders.find(path)]
        where = "by the staticfiles finders (STATICFILES_FINDERS)"
    else:
        root = getattr(settings, "STATIC_ROOT", None)
        missing = [path for path in ASSETS if not root or not (Path(root) / path).is_file()]
        where = "in STATIC_ROOT, and 'django.contrib.staticfiles' is not installed"
    if not missing:
        return []
    return [
        Warning(
            f"django_sse's static files ({', '.join(missing)}) cannot be found {where}: pages "
            f"would show an unstyled bar that never goes live.",
            hint="Add 'django.contrib.staticfiles' to INSTALLED_APPS (with the default "
            "finders), and run collectstatic for production.",
            id="django_sse.W008",
        )
    ]
