"""Support of the live-server tests: everything that runs in, starts or talks to another process.

The in-process tests drive the app through ASGI in the test's own process (``tests/utils.py``);
the live ones start real servers (Daphne, uvicorn, Granian), publishers, workers, a browser or
network namespaces, and read them over real sockets. What those need lives here, apart, so that
a reader of the fast suite never meets it and a subprocess finds it under one name:

- ``processes``, ``services``, ``tcp_proxy``, ``netns``: subprocesses and their logs, the
  shared PostgreSQL and Redis, a proxy to cut, network namespaces;
- ``streams``: an httpx client that reads a live server's event stream;
- ``*_settings``: the ``DJANGO_SETTINGS_MODULE`` of the processes (``e2e_settings`` first);
- ``*_support``: the fixtures' machinery of one test module or family (``e2e_support`` for
  ``test_e2e_daphne``, ``test_faults``, ``test_celery``, ``test_topology``; ``abuse_support``
  for ``test_abuse``, ``test_granian``, ``test_servers``; ...);
- ``*_tool``, ``netns_client``: the commands of ``python -m tests.live`` (``__main__.py``),
  which the tests run as helper processes; ``servers_app`` and ``celery_app``: an ASGI app and a
  Celery app those processes load by name.
"""
