from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from django.contrib.sessions.backends import signed_cookies
from django.core.checks import Error, Warning
from django.test import override_settings

from django_sse import checks
from django_sse.checks import deployment
from django_sse.checks.settings import check_db_threads
from tests import settings as test_settings


def ids(messages: Sequence[object]) -> list[str]:
    return [m.id for m in messages]  # type: ignore[attr-defined]


def test_test_settings_pass_every_check() -> None:
    assert checks.check_settings(None) == []
    assert checks.check_channel_layer(None) == []
    assert checks.check_middleware(None) == []
    assert checks.check_session_engine(None) == []
    assert checks.check_daphne(None) == []
    assert checks.check_redis_timeout(None) == []
    assert checks.check_buffer_size(None) == []
    assert checks.check_task_backend(None) == []
    assert checks.check_static_assets(None) == []
    assert checks.check_metrics(None) == []
    assert check_db_threads(None) == []


def test_a_buffer_smaller_than_four_of_the_largest_events_is_w006() -> None:
    with override_settings(DJANGO_SSE={"MAX_BUFFERED_BYTES": 100_000, "MAX_DATA_BYTES": 65536}):
        (warning,) = checks.check_buffer_size(None)
    assert isinstance(warning, Warning) and warning.id == "django_sse.W006"
    assert "262144" in (warning.hint or "")
    with override_settings(DJANGO_SSE={"MAX_BUFFERED_BYTES": 262144, "MAX_DATA_BYTES": 65536}):
        assert checks.check_buffer_size(None) == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("nope", "DJANGO_SSE must be a dict, not str."),
        ({"HEARTBEAT": 5}, "unknown key 'HEARTBEAT'"),
        ({"HEARTBEAT_SECONDS": 0}, "DJANGO_SSE['HEARTBEAT_SECONDS'] must be a positive number"),
        ({"MAX_DATA_BYTES": "64k"}, "DJANGO_SSE['MAX_DATA_BYTES'] must be a positive number"),
        ({"POLL_SECONDS": True}, "DJANGO_SSE['POLL_SECONDS'] must be a positive number"),
        ({"CHANNEL_LAYER": ""}, "DJANGO_SSE['CHANNEL_LAYER'] must be a non-empty string"),
        ({"MAX_BUFFERED_BYTES": -1}, "DJANGO_SSE['MAX_BUFFERED_BYTES'] must be a positive number"),
        ({"SEND_TIMEOUT_SECONDS": 0}, "DJANGO_SSE['SEND_TIMEOUT_SECONDS'] must be a positive"),
        ({"MAX_STREAMS_PER_IDENTITY": 2.5}, "'MAX_STREAMS_PER_IDENTITY'] must be a positive"),
        ({"RESUME_MAX_AGE_SECONDS": "1d"}, "'RESUME_MAX_AGE_SECONDS'] must be a positive"),
    ],
)
def test_bad_settings_are_e001_naming_the_key(value: object, fragment: str) -> None:
    with override_settings(DJANGO_SSE=value):
        messages = checks.check_settings(None)
    assert ids(messages) == ["django_sse.E001"]
    assert isinstance(messages[0], Error)
    assert fragment in messages[0].msg


@pytest.mark.parametrize("value", ["tests.nowhere.func", 42])
def test_unusable_authorize_is_e002(value: object) -> None:
    with override_settings(DJANGO_SSE={"AUTHORIZE": value}):
        assert ids(checks.check_settings(None)) == ["django_sse.E002"]


def test_authorize_by_path_is_fine() -> None:
    with override_settings(DJANGO_SSE={"AUTHORIZE": "tests.test_views.staff_may_watch"}):
        assert checks.check_settings(None) == []


def test_missing_channel_layer_is_w001() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        messages = checks.check_channel_layer(None)
    assert ids(messages) == ["django_sse.W001"]
    assert isinstance(messages[0], Warning)
    with override_settings(DJANGO_SSE={"CHANNEL_LAYER": "events"}):
        assert ids(checks.check_channel_layer(None)) == ["django_sse.W001"]


def test_missing_session_middleware_is_e003() -> None:
    middleware = [m for m in test_settings.MIDDLEWARE if "SessionMiddleware" not in m]
    with override_settings(MIDDLEWARE=middleware):
        assert ids(checks.check_middleware(None)) == ["django_sse.E003"]


def test_missing_auth_middleware_is_e004() -> None:
    middleware = [m for m in test_settings.MIDDLEWARE if "AuthenticationMiddleware" not in m]
    with override_settings(MIDDLEWARE=middleware):
        assert ids(checks.check_middleware(None)) == ["django_sse.E004"]


def test_middleware_subclasses_count() -> None:
    middleware = [
        "tests.middleware.MySessionMiddleware" if "SessionMiddleware" in m else m
        for m in test_settings.MIDDLEWARE
    ]
    with override_settings(MIDDLEWARE=middleware):
        assert checks.check_middleware(None) == []


class SessionStore(signed_cookies.SessionStore):
    """This module as a SESSION_ENGINE: signed cookies under another name."""


@pytest.mark.parametrize(
    "engine", ["django.contrib.sessions.backends.signed_cookies", "tests.test_checks"]
)
def test_signed_cookie_sessions_are_e005(engine: str) -> None:
    with override_settings(SESSION_ENGINE=engine):
        messages = checks.check_session_engine(None)
    assert ids(messages) == ["django_sse.E005"]
    assert isinstance(messages[0], Error)
    assert "cached_db" in (messages[0].hint or "")


@pytest.mark.parametrize("engine", ["db", "cache", "cached_db", "file"])
def test_server_side_sessions_pass(engine: str) -> None:
    with override_settings(SESSION_ENGINE=f"django.contrib.sessions.backends.{engine}"):
        assert checks.check_session_engine(None) == []


def test_daphne_missing_is_w002() -> None:
    apps = [a for a in test_settings.INSTALLED_APPS if a != "daphne"]
    with override_settings(INSTALLED_APPS=apps):
        assert ids(checks.check_daphne(None)) == ["django_sse.W002"]


def test_daphne_after_staticfiles_is_w003() -> None:
    apps = [a for a in test_settings.INSTALLED_APPS if a != "daphne"] + ["daphne"]
    with override_settings(INSTALLED_APPS=apps):
        assert ids(checks.check_daphne(None)) == ["django_sse.W003"]


def test_missing_asgi_application_is_w004() -> None:
    with override_settings(ASGI_APPLICATION=None):
        assert ids(checks.check_daphne(None)) == ["django_sse.W004"]


@pytest.mark.parametrize(
    "origins", ["https://a.example", ["https://a.example/path"], ["a.example"], [5]]
)
def test_bad_cors_origins_are_e001(origins: object) -> None:
    with override_settings(DJANGO_SSE={"CORS_ALLOWED_ORIGINS": origins}):
        messages = checks.check_settings(None)
    assert ids(messages) == ["django_sse.E001"]
    assert "CORS_ALLOWED_ORIGINS" in messages[0].msg


def test_good_cors_origins() -> None:
    origins = ["https://a.example", "http://127.0.0.1:8001"]
    with override_settings(DJANGO_SSE={"CORS_ALLOWED_ORIGINS": origins}):
        assert checks.check_settings(None) == []


def _core_layer(hosts: Sequence[object]) -> dict[str, object]:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": hosts},
        }
    }


@pytest.mark.parametrize(
    "hosts",
    [
        ["redis://127.0.0.1:6379/0"],
        [("127.0.0.1", 6379)],
        [{"address": "redis://127.0.0.1:6379/0"}],
        [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 5}],
        [{"address": "redis://a:6379", "socket_timeout": None}, "redis://b:6379"],
    ],
)
def test_redis_py_8_socket_timeout_on_the_core_layer_is_w005(hosts: Sequence[object]) -> None:
    with override_settings(CHANNEL_LAYERS=_core_layer(hosts)):
        messages = checks.check_redis_timeout(None)
    assert ids(messages) == ["django_sse.W005"]
    assert "socket_timeout" in (messages[0].hint or "")


def test_redis_hosts_without_socket_timeout_pass() -> None:
    hosts = [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}]
    with override_settings(CHANNEL_LAYERS=_core_layer(hosts)):
        assert checks.check_redis_timeout(None) == []
    pubsub = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=pubsub):
        assert checks.check_redis_timeout(None) == []


# -- W007: the immediate task backend ----------------------------------------------------------


def test_tasks_unused_is_not_w007() -> None:
    # The test settings install neither the backport nor TASKS.
    assert checks.check_task_backend(None) == []


def test_the_immediate_backend_is_w007() -> None:
    tasks = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=tasks):
        (warning,) = checks.check_task_backend(None)
    assert isinstance(warning, Warning) and warning.id == "django_sse.W007"
    assert "ImmediateBackend" in warning.msg and "db_worker" in (warning.hint or "")


@pytest.mark.parametrize("explicit", [True, False])
def test_the_backports_immediate_backend_is_w007_also_by_default(explicit: bool) -> None:
    pytest.importorskip("django_tasks", reason="the django-tasks backport is not installed")
    overrides: dict[str, object] = {
        "INSTALLED_APPS": [*test_settings.INSTALLED_APPS, "django_tasks"]
    }
    if explicit:
        overrides["TASKS"] = {
            "default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}
        }
    with override_settings(**overrides):
        assert ids(checks.check_task_backend(None)) == ["django_sse.W007"]


def test_a_backend_app_installed_without_tasks_is_w007() -> None:
    # Django 6 has django.tasks without an app to install: a project that adds the database
    # backend's app and forgets TASKS enqueues to the immediate backend all the same.
    pytest.importorskip("django_tasks_db", reason="django-tasks-db is not installed")
    apps = [*test_settings.INSTALLED_APPS, "django_tasks_db"]
    with override_settings(INSTALLED_APPS=apps):
        assert ids(checks.check_task_backend(None)) == ["django_sse.W007"]
        tasks = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
        with override_settings(TASKS=tasks):
            assert checks.check_task_backend(None) == []


def test_a_backend_with_a_worker_is_not_w007() -> None:
    with override_settings(TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}):
        assert checks.check_task_backend(None) == []


# -- W008: the client's static files -----------------------------------------------------------


def test_assets_hidden_from_the_finders_are_w008() -> None:
    # Only the file-system finder, with no directories: the app's own static/ is not searched.
    with override_settings(
        STATICFILES_FINDERS=["django.contrib.staticfiles.finders.FileSystemFinder"],
        STATICFILES_DIRS=[],
    ):
        (warning,) = checks.check_static_assets(None)
    assert warning.id == "django_sse.W008"
    assert "django_sse/django_sse.js" in warning.msg and "django_sse/django_sse.css" in warning.msg


def test_staticfiles_installed_by_its_app_config_is_not_w008() -> None:
    config = "django.contrib.staticfiles.apps.StaticFilesConfig"
    apps = [
        config if app == "django.contrib.staticfiles" else app
        for app in test_settings.INSTALLED_APPS
    ]
    assert config in apps
    with override_settings(INSTALLED_APPS=apps, STATIC_ROOT=None):
        assert checks.check_static_assets(None) == []


def test_without_staticfiles_the_assets_must_be_in_static_root(tmp_path: Path) -> None:
    apps = [a for a in test_settings.INSTALLED_APPS if a != "django.contrib.staticfiles"]
    with override_settings(INSTALLED_APPS=apps, STATIC_ROOT=str(tmp_path)):
        assert ids(checks.check_static_assets(None)) == ["django_sse.W008"]
        for asset in deployment.ASSETS:
            (tmp_path / asset).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / asset).write_text("/* collected */")
        assert checks.check_static_assets(None) == []


# -- E006: metrics without prometheus_client ---------------------------------------------------


def test_metrics_must_be_a_boolean() -> None:
    with override_settings(DJANGO_SSE={"METRICS": "yes"}):
        messages = checks.check_settings(None)
    assert ids(messages) == ["django_sse.E001"]
    assert "DJANGO_SSE['METRICS'] must be True or False, not 'yes'." in messages[0].msg
    with override_settings(DJANGO_SSE={"METRICS": True}):
        assert checks.check_settings(None) == []


def test_metrics_on_without_prometheus_client_is_e006(monkeypatch: pytest.MonkeyPatch) -> None:
    with override_settings(DJANGO_SSE={"METRICS": True}):
        assert checks.check_metrics(None) == []
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        (error,) = checks.check_metrics(None)
    assert isinstance(error, Error) and error.id == "django_sse.E006"
    assert "django-sse-jobs[metrics]" in (error.hint or "")


def test_metrics_off_need_no_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert checks.check_metrics(None) == []
    with override_settings(DJANGO_SSE={"METRICS": False}):
        assert checks.check_metrics(None) == []


# -- W009: a channel layer that cannot be built ------------------------------------------------


def test_a_layer_that_raises_when_built_is_w009() -> None:
    # Channels' get_channel_layer() would answer None for it, without a word.
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"x": 1}}}
    with override_settings(CHANNEL_LAYERS=layers):
        (warning,) = checks.check_channel_layer(None)
    assert warning.id == "django_sse.W009"
    assert "TypeError" in warning.msg and "'default'" in warning.msg


def test_a_layer_that_cannot_be_imported_is_w009() -> None:
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "nowhere.Layer"}}):
        assert ids(checks.check_channel_layer(None)) == ["django_sse.W009"]


# -- E007: DB_THREADS ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_db_threads_other_than_a_whole_number_from_one_is_e007(value: object) -> None:
    with override_settings(DJANGO_SSE={"DB_THREADS": value}):
        (error,) = check_db_threads(None)
        assert checks.check_settings(None) == []  # a known key: E007 alone says what is wrong
    assert isinstance(error, Error) and error.id == "django_sse.E007"
    assert f"not {value!r}." in error.msg


@pytest.mark.parametrize("value", [None, 1, 8])
def test_db_threads_none_or_a_count_pass(value: object) -> None:
    with override_settings(DJANGO_SSE={"DB_THREADS": value}):
        assert check_db_threads(None) == []
