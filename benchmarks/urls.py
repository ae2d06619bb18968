from __future__ import annotations

import django_eventstream
from django.urls import include, path

from benchmarks import inproc
from benchmarks.peers import naive

urlpatterns = [
    # Ours, unchanged.
    path("sse/", include("django_sse.urls")),
    # Benchmark-only: publish from a thread inside the server (in-memory layer configs).
    path("bench/publish/", inproc.start),
    path("bench/stats/", inproc.stats),
    # Peers.
    path("naive/events/", naive.events),
    path("es/events/", include(django_eventstream.urls)),
]
