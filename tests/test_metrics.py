"""Prometheus metrics (``DJANGO_SSE["METRICS"]``): their values after scripted scenarios, each
test with a registry of its own; nothing imported when they are off; multi-process mode."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from prometheus_client import CollectorRegistry

from django_sse import metrics, publish
from django_sse.models import Job
from django_sse.pushing import get_layer, push_event
from tests.utils import StreamClient, make_session

ROOT = Path(__file__).resolve().parent.parent


def enabled(**extra: Any) -> dict[str, Any]:
    return {**settings.DJANGO_SSE, "METRICS": True, **extra}


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of this test's own."""
    return CollectorRegistry()


@contextmanager
def metrics_on(registry: CollectorRegistry, **extra: Any) -> Iterator[None]:
    """Metrics on (and these settings), recorded in ``registry``; unbound on the way out."""
    with override_settings(DJANGO_SSE=enabled(**extra)):
        metrics.bind(registry)
        yield


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.01)


async def open_stream(path: str, key: str | None) -> StreamClient:
    client = StreamClient(path, session_key=key)
    await client.start()
    return client


def job_url(job_id: object, query: str = "") -> str:
    return f"/sse/jobs/{job_id}/events/" + (f"?{query}" if query else "")


async def apublish_in_thread(job: Job, event: str, data: Any = None) -> None:
    await sync_to_async(publish)(job, event, data)


# -- in-process scenarios ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_job_stream_opened_replayed_delivered_refused_and_closed(
    hub_cleanup: None, registry: CollectorRegistry, job: Job, owner_key: str
) -> None:
    def value(name: str, **labels: str) -> float:
        return sample(registry, name, **labels)

    with metrics_on(registry, HEARTBEAT_SECONDS=0.5):
        await apublish_in_thread(job, "step", {"n": 1})
        await apublish_in_thread(job, "step", {"n": 2})
        assert value("django_sse_publish_duration_seconds_count") == 2
        assert value("django_sse_publish_duration_seconds_sum") > 0

        client = await open_stream(job_url(job.pk), owner_key)
        assert client.status == 200
        await client.read_events(2)
        assert value("django_sse_streams_open", kind="job") == 1
        assert value("django_sse_events_replayed_total", kind="job") == 2
        assert value("django_sse_events_delivered_total", kind="job") == 2

        await apublish_in_thread(job, "step", {"n": 3})
        await client.read_events(3)
        # A live event the hub wrote directly is counted by the next heartbeat at the latest.
        await until(lambda: value("django_sse_events_delivered_total", kind="job") == 3)
        assert value("django_sse_events_replayed_total", kind="job") == 2

        other = await User.objects.acreate(username="other")
        refused = await open_stream(job_url(job.pk), await sync_to_async(make_session)(other))
        assert refused.status == 404
        assert (await open_stream(job_url("nope"), owner_key)).status == 404
        assert value("django_sse_streams_refused_total", reason="not allowed") == 1
        assert value("django_sse_streams_refused_total", reason="malformed id") == 1

        await sync_to_async(job.succeed)({"rows": 3})
        await client.read_to_end()
        assert value("django_sse_streams_closed_total", kind="job", reason="job finished") == 1
        assert value("django_sse_streams_open", kind="job") == 0
        assert value("django_sse_events_delivered_total", kind="job") == 4
        assert value("django_sse_publish_duration_seconds_count") == 4

        # A finished job's stream, asked past its end: refused with 204.
        assert (await open_stream(job_url(job.pk, "last_event_id=4"), owner_key)).status == 204
        assert value("django_sse_streams_refused_total", reason="job finished") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_session_and_html_streams_and_the_stream_limit(
    hub_cleanup: None, registry: CollectorRegistry, job: Job, owner_key: str
) -> None:
    def value(name: str, **labels: str) -> float:
        return sample(registry, name, **labels)

    with metrics_on(registry, MAX_STREAMS_PER_IDENTITY=1):
        everything = await open_stream("/sse/events/", owner_key)
        assert everything.status == 200
        await everything.read_chunk()
        assert value("django_sse_streams_open", kind="session") == 1
        assert (await open_stream(job_url(job.pk), owner_key)).status == 429
        assert value("django_sse_streams_refused_total", reason="too many streams") == 1
        await everything.disconnect()
        assert value("django_sse_streams_open", kind="session") == 0
        reason = {"kind": "session", "reason": "client went away"}
        assert value("django_sse_streams_closed_total", **reason) == 1

        await apublish_in_thread(job, "step", {"n": 1})
        html = await open_stream(job_url(job.pk, "format=html"), owner_key)
        await html.read_events(1)
        assert value("django_sse_streams_open", kind="html") == 1
        assert value("django_sse_events_replayed_total", kind="html") == 1
        assert value("django_sse_streams_open", kind="job") == 0
        await html.disconnect()
        assert value("django_sse_streams_open", kind="html") == 0
        reason = {"kind": "html", "reason": "client went away"}
        assert value("django_sse_streams_closed_total", **reason) == 1
        assert (await open_stream(job_url(job.pk, "format=xml"), owner_key)).status == 400
        assert value("django_sse_streams_refused_total", reason="bad request") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_gaps_filled_from_the_database(
    hub_cleanup: None,
    registry: CollectorRegistry,
    job: Job,
    owner_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with metrics_on(registry, POLL_SECONDS=60):
        client = await open_stream(job_url(job.pk), owner_key)
        await client.read_chunk()
        await apublish_in_thread(job, "a")
        await client.read_events(1)
        assert sample(registry, "django_sse_gap_filled_events_total") == 0
        # The layer drops #2 and #3; #4 arrives and the hub reads the gap from the database.
        monkeypatch.setattr("django_sse.pushing.push_event", lambda event: None)
        await apublish_in_thread(job, "b")
        await apublish_in_thread(job, "c")
        monkeypatch.setattr("django_sse.pushing.push_event", push_event)
        await apublish_in_thread(job, "d")
        await client.read_events(4)
        assert client.seqs == [1, 2, 3, 4]
        assert sample(registry, "django_sse_gap_filled_events_total") >= 2
        await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_layer_receive_failures(
    hub_cleanup: None,
    registry: CollectorRegistry,
    job: Job,
    owner_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = get_layer()
    assert layer is not None

    async def receive(channel: str) -> dict[str, Any]:
        raise ConnectionError("the layer is down")

    monkeypatch.setattr(layer, "receive", receive)
    with metrics_on(registry):
        client = await open_stream(job_url(job.pk), owner_key)
        await client.read_chunk()
        await until(lambda: sample(registry, "django_sse_layer_receive_failures_total") >= 2)
        await client.disconnect()


def test_a_settings_change_unbinds(registry: CollectorRegistry) -> None:
    with metrics_on(registry):
        metrics.stream_refused("not allowed")
        assert sample(registry, "django_sse_streams_refused_total", reason="not allowed") == 1
        with override_settings(DJANGO_SSE={"METRICS": False}):
            metrics.stream_refused("not allowed")
            assert metrics.stream_refused is metrics._nothing
        assert sample(registry, "django_sse_streams_refused_total", reason="not allowed") == 1


def test_enabled_but_missing_records_nothing_and_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setattr(metrics, "_missing_logged", False)
    with override_settings(DJANGO_SSE=enabled()):
        metrics.stream_opened("job")
        assert metrics.stream_opened is metrics._nothing
    assert "prometheus_client cannot be imported (django_sse.E006)" in caplog.text


# -- across processes ----------------------------------------------------------------------------

# Runs in a fresh interpreter with the test settings (METRICS as given in argv[1]): every module
# of the package imported, every recorder called, the checks run; prints whether
# prometheus_client was imported and what the default registry exports.
SCRIPT = """
import importlib, json, os, pkgutil, sys
import tests.settings as test_settings
test_settings.DJANGO_SSE = {**test_settings.DJANGO_SSE, "METRICS": sys.argv[1] == "on"}
import django
django.setup()
import django_sse
for module in pkgutil.walk_packages(django_sse.__path__, "django_sse."):
    importlib.import_module(module.name)
from django.core.management import call_command
from django_sse import metrics
call_command("check", verbosity=0)
for _ in range(int(sys.argv[2])):
    metrics.stream_opened("job")
metrics.stream_refused("not allowed")
metrics.gap_filled(2)
metrics.layer_receive_failed()
metrics.stream_closed("session", "client went away")
exported = ""
if "prometheus_client" in sys.modules:
    import prometheus_client
    exported = prometheus_client.generate_latest().decode()
imported = "prometheus_client" in sys.modules
print(json.dumps({"imported": imported, "exported": exported, "pid": os.getpid()}))
"""


def run_script(flag: str, opened: int = 1, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, flag, str(opened)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_nothing_imports_prometheus_client_when_off() -> None:
    result = run_script("off")
    assert (result["imported"], result["exported"]) == (False, "")


def test_the_default_registry_exports_every_metric_when_on() -> None:
    result = run_script("on")
    assert result["imported"] is True
    exported = result["exported"]
    for line in [
        'django_sse_streams_open{kind="job"} 1.0',
        'django_sse_streams_refused_total{reason="not allowed"} 1.0',
        "django_sse_gap_filled_events_total 2.0",
        "django_sse_layer_receive_failures_total 1.0",
        'django_sse_streams_closed_total{kind="session",reason="client went away"} 1.0',
        "# TYPE django_sse_events_delivered_total counter",
        "# TYPE django_sse_events_replayed_total counter",
        "# TYPE django_sse_publish_duration_seconds histogram",
    ]:
        assert line in exported


def test_multiprocess_mode_sums_live_processes(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    first = run_script("on", opened=2, env=env)
    run_script("on", opened=3, env=env)
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=str(tmp_path))
    assert sample(collected, "django_sse_streams_open", kind="job") == 5
    assert sample(collected, "django_sse_streams_refused_total", reason="not allowed") == 2
    # A process that ended (mark_process_dead, e.g. from gunicorn's child_exit) leaves the
    # gauge ("livesum") and stays in the counters.
    multiprocess.mark_process_dead(first["pid"], str(tmp_path))
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=str(tmp_path))
    assert sample(collected, "django_sse_streams_open", kind="job") == 3
    assert sample(collected, "django_sse_streams_refused_total", reason="not allowed") == 2
