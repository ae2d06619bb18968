"""Checks of the project around the app: the middleware and session engine a stream's
authorization needs, Daphne's place in ``INSTALLED_APPS``, a task backend that really runs
tasks in the background, and the client's static files."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any, cast

import django
from django.apps import AppConfig
from django.apps import apps as app_registry
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string


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
