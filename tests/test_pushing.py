"""Pushing committed events to the channel layer from sync code (workers, threads)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.test import override_settings

from django_sse import publish
from django_sse.groups import job_group
from django_sse.hub import close_hub, get_hub
from django_sse.models import Job, JobEvent
from django_sse.pushing import hub_loops, layer_sender, register_hub_loop, unregister_hub_loop
from tests.live.services import require_redis

pytestmark = pytest.mark.django_db(transaction=True)


def redis_layer(url: str, prefix: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": url, "socket_timeout": None}],
                "prefix": prefix,
                "capacity": 1000,
            },
        }
    }


@pytest.fixture
def fresh_layers() -> Any:
    """Layers built from the overridden settings, not the suite's."""
    saved = dict(channel_layers.backends)
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
    channel_layers.backends.update(saved)


def total_connections(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


@pytest.mark.pgredis
def test_a_burst_from_one_worker_reuses_redis_connections(fresh_layers: None) -> None:
    url = require_redis()
    with override_settings(CHANNEL_LAYERS=redis_layer(url, f"dsse-burst-{time.time_ns()}")):
        job = Job.objects.create(name="burst")
        group = job_group(job.pk)
        layer = get_channel_layer()
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group, channel)
        publish(job, "warm-up")  # the first push opens the layer sender's connection
        assert layer_sender.flush(10)
        before = total_connections(url)
        for n in range(200):
            publish(job, "step", {"n": n})
        assert layer_sender.flush(10)
        opened = total_connections(url) - before

        async def drain() -> list[int]:
            seqs = []
            for _ in range(201):
                message = await layer.receive(channel)
                seqs.append(message["seq"])
            return seqs

        received = async_to_sync(drain)()
    # A naive async_to_sync(group_send) per event opens a connection per event.
    assert opened <= 3
    assert received == list(range(1, 202))


def test_publishing_works_when_the_layer_is_down(
    fresh_layers: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: every push fails at once.
    dead = redis_layer("redis://127.0.0.1:1/0", "dsse-dead")
    with override_settings(CHANNEL_LAYERS=dead), caplog.at_level(logging.WARNING, "django_sse"):
        job = Job.objects.create(name="no layer")
        event = publish(job, "step", {"n": 1})
        job.succeed()
        assert layer_sender.flush(10)
    assert event.seq == 1
    assert list(JobEvent.objects.filter(job=job).values_list("seq", flat=True)) == [1, 2]
    assert "Could not push event #1 of job" in caplog.text
    assert "open streams will read it from the database" in caplog.text


@pytest.mark.pgredis
def test_pushes_from_many_threads_all_arrive_in_each_threads_order(fresh_layers: None) -> None:
    url = require_redis()
    with override_settings(CHANNEL_LAYERS=redis_layer(url, f"dsse-threads-{time.time_ns()}")):
        jobs = [Job.objects.create(name=f"t{n}") for n in range(4)]
        layer = get_channel_layer()
        channel = async_to_sync(layer.new_channel)()
        for job in jobs:
            async_to_sync(layer.group_add)(job_group(job.pk), channel)

        def work(job: Job) -> None:
            from django.db import connection

            try:
                for n in range(25):
                    publish(job, "step", {"n": n})
            finally:
                connection.close()

        threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert layer_sender.flush(10)

        async def drain() -> list[dict[str, Any]]:
            return [await layer.receive(channel) for _ in range(100)]

        messages = async_to_sync(drain)()
    for job in jobs:
        seqs = [m["seq"] for m in messages if m["job"] == job.pk.hex]
        assert seqs == list(range(1, 26))


# -- the in-memory layer: the loops of this process's hubs -------------------------------------


def test_hub_loops_are_the_registered_loops_that_run() -> None:
    loop = asyncio.new_event_loop()
    running = threading.Event()
    loop.call_soon(running.set)
    thread = threading.Thread(target=loop.run_forever)
    register_hub_loop(loop)
    try:
        assert loop not in hub_loops()  # not running yet
        thread.start()
        assert running.wait(5)
        assert loop in hub_loops()
        unregister_hub_loop(loop)
        assert loop not in hub_loops()
        register_hub_loop(loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert loop not in hub_loops()  # stopped
    loop.close()
    assert loop not in hub_loops()
    unregister_hub_loop(loop)


@pytest.mark.asyncio
async def test_a_hub_registers_its_loop_until_it_is_closed() -> None:
    loop = asyncio.get_running_loop()
    get_hub()
    assert loop in hub_loops()
    await close_hub()
    assert loop not in hub_loops()
