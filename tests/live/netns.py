"""Network namespaces for ``test_network.py``: a server namespace and a client namespace joined
by a veth pair, with packets dropped (iptables, in the client namespace) and a slow link
(``tc ... tbf``, on the server's end) on demand.

Needs root, iproute2 (``ip``), ``tc`` and ``iptables``. Everything is created under names unique
to the run and removed at the end, even on failure; both addresses live in namespaces of our
own, so no traffic reaches the host's network or anybody else's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pytest

SERVER_ADDRESS = "10.203.0.1"
CLIENT_ADDRESS = "10.203.0.2"
PREFIX_LENGTH = 30
TOOLS = ("ip", "tc", "iptables")
# Each command is bounded; a stuck one fails the test instead of hanging it.
COMMAND_SECONDS = 15


class CommandFailed(Exception):
    """A command exited non-zero or timed out; the message names it and has its stderr."""


def unavailable(reason: str) -> None:
    """Skip the test for a missing capability, or fail it under ``CI=true``, where the
    capability is expected."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"network tests need {reason} (CI=true: not skipped)", pytrace=False)
    pytest.skip(f"network tests need {reason}")


def missing_requirements() -> list[str]:
    """What this process lacks before anything is tried: root, and each tool on PATH."""
    missing = [] if os.geteuid() == 0 else ["root"]
    return missing + [f"the {tool!r} command" for tool in TOOLS if shutil.which(tool) is None]


def run(*command: str, timeout: float = COMMAND_SECONDS) -> str:
    """Run ``command`` to its end; its stdout, or ``CommandFailed``."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(f"{' '.join(command)}: {exc}") from exc
    if done.returncode != 0:
        raise CommandFailed(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Link:
    """Two namespaces and the veth pair between them."""

    server_ns: str
    client_ns: str
    server_dev: str
    client_dev: str
    server_address: str = SERVER_ADDRESS
    client_address: str = CLIENT_ADDRESS

    def in_server(self, *command: str) -> list[str]:
        """``command`` run inside the server namespace (it keeps our environment)."""
        return ["ip", "netns", "exec", self.server_ns, *command]

    def in_client(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *command]

    # -- the client's packets (iptables in the client namespace) --

    def drop_client_packets(self) -> None:
        """The client vanishes: nothing in or out, no FIN and no RST (its process and its
        socket stay as they are)."""
        for chain in ("INPUT", "OUTPUT"):
            run(*self.in_client("iptables", "-w", "5", "-A", chain, "-j", "DROP"))

    def lose_client_packets(self, probability: float) -> None:
        """Each packet to or from the client is dropped with ``probability``."""
        rule = f"-m statistic --mode random --probability {probability} -j DROP".split()
        for chain in ("INPUT", "OUTPUT"):
            run(*self.in_client("iptables", "-w", "5", "-A", chain, *rule))

    def clear_client_rules(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            run(*self.in_client("iptables", "-w", "5", "-F", chain))

    # -- the server's end of the link (tc in the server namespace) --

    def shape(self, rate: str, burst: str, latency: str) -> None:
        """A token bucket on what the server sends: ``rate`` at most."""
        command = f"tc qdisc replace dev {self.server_dev} root tbf rate {rate} burst {burst}"
        run(*self.in_server(*command.split(), "latency", latency))

    def unshape(self) -> None:
        with contextlib.suppress(CommandFailed):  # nothing to delete
            run(*self.in_server("tc", "qdisc", "del", "dev", self.server_dev, "root"))

    def limit_server_send_buffer(self, max_bytes: int) -> None:
        """Cap the kernel's send buffer of the server's TCP sockets (a per-namespace setting),
        so that what a slow client does not take yet piles up where it can be measured."""
        run(*self.in_server("sysctl", "-q", "-w", f"net.ipv4.tcp_wmem=4096 16384 {max_bytes}"))

    def probe(self) -> None:
        """Try each kind of rule once (and remove it): ``CommandFailed`` names what fails."""
        self.lose_client_packets(0.05)
        self.clear_client_rules()
        self.shape("1mbit", "32kbit", "400ms")
        self.unshape()


def _create(link: Link) -> None:
    run("ip", "netns", "add", link.server_ns)
    run("ip", "netns", "add", link.client_ns)
    run(
        *f"ip link add {link.server_dev} netns {link.server_ns} type veth".split(),
        *f"peer name {link.client_dev} netns {link.client_ns}".split(),
    )
    for ns, dev, address in (
        (link.server_ns, link.server_dev, link.server_address),
        (link.client_ns, link.client_dev, link.client_address),
    ):
        run("ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")


def _delete(link: Link) -> list[str]:
    """Delete both namespaces (the veth pair goes with them); the errors, if any."""
    errors = []
    for ns in (link.server_ns, link.client_ns):
        try:
            run("ip", "netns", "del", ns)
        except CommandFailed as exc:
            if ns in run("ip", "netns", "list"):
                errors.append(str(exc))
    return errors


@contextlib.contextmanager
def veth_link() -> Iterator[Link]:
    """Two fresh namespaces joined by a veth pair, deleted at the end. Stop the processes
    started inside them first: a namespace lives on while a process is in it."""
    tag = f"{os.getpid()}{secrets.token_hex(2)}"
    # Interface names: 15 characters at most.
    link = Link(
        server_ns=f"django_sse_{tag}_server",
        client_ns=f"django_sse_{tag}_client",
        server_dev=f"dss{tag}"[:14] + "s",
        client_dev=f"dss{tag}"[:14] + "c",
    )
    try:
        _create(link)
        yield link
    finally:
        errors = _delete(link)
        assert not errors, f"could not remove the namespaces: {errors}"


# -- what a process in a namespace listens on --------------------------------------------------


def _proc_address(address: str) -> str:
    """``address`` as /proc/net/tcp prints it (the 32-bit value in host byte order, hex)."""
    (value,) = struct.unpack("=I", socket.inet_aton(address))
    return f"{value:08X}"


def listening(pid: int, address: str, port: int) -> bool:
    """Whether a TCP socket in ``pid``'s network namespace listens on ``address:port`` (or on
    every address): read from ``/proc/<pid>/net/tcp``, so no connection is needed."""
    wanted = {f"{_proc_address(address)}:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return False
    # Fields: sl, local address, remote address, state ("0A" is LISTEN), ...
    return any(
        fields[1] in wanted and fields[3] == "0A"
        for fields in (line.split() for line in lines)
        if len(fields) > 3
    )


class Connection(NamedTuple):
    """A TCP connection as ``/proc/<pid>/net/tcp`` shows it."""

    state: str  # "01" established, "04" FIN_WAIT1, ... (include/net/tcp_states.h)
    unacked_bytes: int  # sent and not acknowledged yet, or waiting to be sent
    retransmits: int  # retransmission timeouts in a row


def connections_of(pid: int, port: int) -> list[Connection]:
    """The TCP connections (not listening sockets) on local ``port`` that process ``pid``
    holds: the sockets of ``/proc/<pid>/net/tcp`` whose inode is one of its descriptors."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return []
    suffix = f":{port:04X}"
    # Fields: sl, local address, remote address, state, tx_queue:rx_queue, timer, retransmits,
    # uid, timeout, inode, ...
    return [
        Connection(fields[3], int(fields[4].split(":")[0], 16), int(fields[6], 16))
        for fields in (line.split() for line in lines)
        if len(fields) > 9
        and fields[1].endswith(suffix)
        and fields[3] != "0A"
        and fields[9] in inodes
    ]
