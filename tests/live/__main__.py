"""The one command line of the live tests' helper processes: ``python -m tests.live GROUP ...``.

Each group is the command line of one module, which documents its commands::

    python -m tests.live e2e setup|logout|publish|history ...     (e2e_tool.py)
    python -m tests.live abuse migrate|make|logout|publish|count ...  (abuse_tool.py)
    python -m tests.live fault commit|die ...                      (fault_tool.py)
    python -m tests.live pg-layer events ...                       (pg_layer_support.py)
    python -m tests.live netns-client hold|follow ...              (netns_client.py)

A group's module is imported only when it is run: the network-namespace client, say, needs
neither Django nor the other groups' imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _e2e(argv: list[str]) -> int:
    from tests.live import e2e_tool

    return e2e_tool.main(argv)


def _abuse(argv: list[str]) -> int:
    from tests.live import abuse_tool

    return abuse_tool.main(argv)


def _fault(argv: list[str]) -> int:
    from tests.live import fault_tool

    return fault_tool.main(argv)


def _pg_layer(argv: list[str]) -> int:
    from tests.live import pg_layer_support

    return pg_layer_support.main(argv)


def _netns_client(argv: list[str]) -> int:
    from tests.live import netns_client

    return netns_client.main(argv)


GROUPS: dict[str, Callable[[list[str]], int]] = {
    "e2e": _e2e,
    "abuse": _abuse,
    "fault": _fault,
    "pg-layer": _pg_layer,
    "netns-client": _netns_client,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in GROUPS:
        sys.stderr.write(f"usage: python -m tests.live {{{','.join(GROUPS)}}} ...\n")
        return 2
    return GROUPS[argv[0]](argv[1:])


sys.exit(main(sys.argv[1:]))
