"""Support for ``test_quickstart.py``: README.rst's Quick start, followed as a new user would.

The Quick start lives in README.rst between ``.. quickstart-start`` and ``.. quickstart-end``.
Its code blocks are read with a plain parser of ``.. code-block:: <language>`` directives and
applied in order to a temporary directory, each the way the README tells the user to:

- ``console`` blocks: every ``$`` command is run (``django-admin`` and ``python`` become this
  test's interpreter; ``cd`` changes the directory), except ``pip install``, whose packages must
  already be installed here (the test never installs anything), and the two long-running
  commands, ``runserver`` and ``db_worker``, which are recorded for the test to start itself. A
  command whose comment names another Django version than this one (``# Django 6``) is skipped.
  A package this environment lacks skips the test (fails it under ``CI=true``).
- A block whose first line is a comment naming a path (``# reports/views.py``,
  ``{# reports/templates/reports/report.html #}``) is that file, written whole (header line
  included, as a copy-paste would); with ``: add at the end`` in its header it is appended. In
  an appended block, a line whose comment says ``Django 5.2 only`` is left out on Django 6.
- A ``diff`` block (``--- path`` / ``+++ path``, hunks separated by ``@@``) is applied to the
  file: each hunk's old lines (`` `` and ``-``) must occur exactly once and become its new lines.

Blocks under the region's sub-section (``With a task worker``) are the second way of running
the work; the blocks before it are the first way, and a complete project on their own.

Every wait is bounded in time and in count; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django

from tests.live.browser_support import unavailable
from tests.live.processes import ROOT, free_port, read_log, stop_process, wait_listening

README = ROOT / "README.rst"
REGION_START = ".. quickstart-start"
REGION_END = ".. quickstart-end"
# The sub-section of the region that switches the work from a thread to a task worker.
TASK_SECTION = "With a task worker"

DIRECTIVE = re.compile(r"^\.\. code-block::\s*(?P<language>\S+)\s*$")
TITLE_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}$")
# The first line of a block that is a file: "# path", "# path: add at the end", "{# path #}".
PATH_HEADER = re.compile(r"^(?:#|\{#)\s*(?P<path>[\w./-]+\.\w+)(?P<rest>.*?)\s*(?:#\})?$")
# In a comment: "Django 6", "Django 5.2 only".
DJANGO_VERSION_COMMENT = re.compile(r"\bDjango (?P<version>\d+(?:\.\d+)?)\b")
# Output that has no place in a Quick start's run.
SERVER_ERRORS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")

DJANGO_MAJOR_MINOR = f"{django.VERSION[0]}.{django.VERSION[1]}"


class QuickstartError(AssertionError):
    """The README's Quick start cannot be followed as written."""


@dataclass
class Block:
    """One ``.. code-block::`` of the region: its language, its lines (dedented) and the title
    of the section it is in."""

    language: str
    lines: list[str]
    section: str
    line_number: int

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def describe(self) -> str:
        first = self.lines[0] if self.lines else ""
        return f"README.rst line {self.line_number} ({self.language}: {first!r})"


def quickstart_region(readme: Path | None = None) -> list[str]:
    """The lines between the two markers (each marker once, in order)."""
    readme = readme or README
    lines = readme.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == REGION_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == REGION_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise QuickstartError(f"{readme.name} needs one {REGION_START!r} before one {REGION_END!r}")
    return lines[starts[0] + 1 : ends[0]]


def parse_blocks(region: list[str], first_line_number: int = 1) -> list[Block]:
    """The code blocks of ``region``, in order, each with its section's title."""
    blocks: list[Block] = []
    section = ""
    i = 0
    while i < len(region):
        line = region[i]
        if (
            i + 1 < len(region)
            and line.strip()
            and TITLE_UNDERLINE.match(region[i + 1])
            and len(region[i + 1]) >= len(line.rstrip())
        ):
            section = line.strip()
            i += 2
            continue
        match = DIRECTIVE.match(line)
        if match is None:
            i += 1
            continue
        start = i + 1
        i += 1
        # Options (":linenos:") and blank lines, then the indented body.
        while i < len(region) and (not region[i].strip() or region[i].lstrip().startswith(":")):
            if region[i].strip() and not region[i].startswith(" "):
                break
            i += 1
        body: list[str] = []
        while i < len(region) and (not region[i].strip() or region[i].startswith(" ")):
            body.append(region[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        blocks.append(
            Block(
                language=match["language"],
                lines=[b[indent:] for b in body],
                section=section,
                line_number=first_line_number + start,
            )
        )
    return blocks


def quickstart_blocks(readme: Path | None = None) -> list[Block]:
    readme = readme or README
    text = readme.read_text(encoding="utf-8").splitlines()
    offset = next(i for i, line in enumerate(text) if line.strip() == REGION_START) + 1
    return parse_blocks(quickstart_region(readme), offset)


def thread_way(blocks: list[Block]) -> list[Block]:
    """The blocks of the first way (a thread): everything before the task worker's section."""
    return [b for b in blocks if b.section != TASK_SECTION]


def task_way(blocks: list[Block]) -> list[Block]:
    """The blocks of the second way: the first way, then the task worker's section."""
    if not any(b.section == TASK_SECTION for b in blocks):
        raise QuickstartError(f"The Quick start has no section {TASK_SECTION!r}")
    return blocks


def applies_here(comment: str) -> bool:
    """Whether a command or line commented with ``comment`` is meant for this Django."""
    match = DJANGO_VERSION_COMMENT.search(comment)
    if match is None:
        return True
    wanted = match["version"]
    return wanted == DJANGO_MAJOR_MINOR or DJANGO_MAJOR_MINOR.startswith(f"{wanted}.")


# -- following the README ---------------------------------------------------------------------


@dataclass
class QuickstartProject:
    """A directory where the Quick start is followed, and the processes it runs."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="django_sse_qs_")))
    cwd: Path | None = None
    server_command: list[str] | None = None
    worker_command: list[str] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cwd is None:
            self.cwd = self.tmp

    @property
    def here(self) -> Path:
        assert self.cwd is not None
        return self.cwd

    @property
    def env(self) -> dict[str, str]:
        """A new user's shell: none of the test suite's Django settings or service URLs."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "REDIS_LAYER")
        }
        # This checkout's django_sse, installed or not.
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- the blocks ----------------------------------------------------------------------------

    def follow(self, blocks: list[Block]) -> None:
        for block in blocks:
            self.apply(block)

    def apply(self, block: Block) -> None:
        if block.language == "console":
            for line in block.lines:
                if line.startswith("$ "):
                    self.run_console_line(line[2:], block)
            return
        if block.language == "diff":
            self.apply_diff(block)
            return
        header = PATH_HEADER.match(block.lines[0]) if block.lines else None
        if header is None:
            raise QuickstartError(f"{block.describe()} does not start with a path comment")
        path = self.here / header["path"]
        rest = header["rest"].strip(" :")
        if rest == "add at the end":
            if not path.exists():
                raise QuickstartError(f"{block.describe()}: {header['path']} does not exist")
            kept = [line for line in block.lines if applies_here(line.partition("#")[2])]
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n" + "\n".join(kept) + "\n")
            self.applied.append(f"appended to {header['path']}")
        elif rest:
            raise QuickstartError(f"{block.describe()}: unknown instruction {rest!r}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text, encoding="utf-8")
            self.applied.append(f"wrote {header['path']}")

    def apply_diff(self, block: Block) -> None:
        old_header, new_header, *body = block.lines
        if not (old_header.startswith("--- ") and new_header.startswith("+++ ")):
            raise QuickstartError(f"{block.describe()}: a diff starts with --- and +++ lines")
        relative = old_header[4:].strip()
        path = self.here / relative
        text = path.read_text(encoding="utf-8")
        hunks: list[list[str]] = [[]]
        for line in body:
            if line.startswith("@@"):
                hunks.append([])
            else:
                hunks[-1].append(line)
        for hunk in filter(None, hunks):
            old = "".join(line[1:] + "\n" for line in hunk if line[:1] in (" ", "-"))
            new = "".join(line[1:] + "\n" for line in hunk if line[:1] in (" ", "+"))
            if any(line[:1] not in (" ", "-", "+") for line in hunk):
                raise QuickstartError(f"{block.describe()}: a hunk line without ' ', - or +")
            if text.count(old) != 1:
                raise QuickstartError(
                    f"{block.describe()}: {old!r} occurs {text.count(old)} times in {relative}"
                )
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
        self.applied.append(f"patched {relative}")

    def run_console_line(self, line: str, block: Block) -> None:
        command, _, comment = line.partition("#")
        if not applies_here(comment):
            return
        for part in command.split("&&"):
            self.run_command(shlex.split(part), block)

    def run_command(self, argv: list[str], block: Block) -> None:
        if argv[0] == "cd":
            self.cwd = self.here / argv[1]
            return
        if argv[:4] == ["python", "-m", "pip", "install"]:
            for package in argv[4:]:
                try:
                    importlib.metadata.version(package)
                except importlib.metadata.PackageNotFoundError:
                    # A skip elsewhere, a failure under CI=true.
                    unavailable(
                        f"{package} is not installed (pip install -e '.[test,example]'): "
                        f"{block.describe()} installs it"
                    )
            self.applied.append(f"checked {' '.join(argv[4:])} installed")
            return
        as_written = " ".join(argv)
        if argv[0] == "django-admin":
            argv = [sys.executable, "-m", "django", *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        else:
            raise QuickstartError(f"{block.describe()}: no rule to run {argv[0]!r}")
        if argv[1:3] == ["manage.py", "runserver"]:
            self.server_command = argv
            return
        if argv[1:3] == ["manage.py", "db_worker"]:
            self.worker_command = argv
            return
        done = subprocess.run(
            argv,
            cwd=self.here,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise QuickstartError(
                f"{as_written} (from {block.describe()}) failed:\n{done.stdout}\n{done.stderr}"
            )
        self.applied.append(f"ran {as_written}")

    def check(self) -> str:
        """``manage.py check --fail-level WARNING``: the project as written has no warning (of
        django_sse's checks, daphne's or Django's)."""
        done = subprocess.run(
            [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
            cwd=self.here,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"manage.py check:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    # -- the processes -------------------------------------------------------------------------

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=self.here,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def start_server(self) -> str:
        """``runserver`` as the README says, plus ``--noreload`` (one process to stop) and a
        free port on 127.0.0.1; returns its base URL once it listens."""
        if self.server_command is None:
            raise QuickstartError("The Quick start never says to run manage.py runserver")
        port = free_port()
        log = self.tmp / "server.log"
        process = self.start([*self.server_command, "--noreload", f"127.0.0.1:{port}"], log)
        wait_listening(process, port, lambda: read_log(log)[-4000:], timeout=30, name="runserver")
        return f"http://127.0.0.1:{port}"

    def start_worker(self) -> subprocess.Popen[bytes]:
        """``db_worker`` as the README says, plus ``--no-reload`` (the new project has DEBUG on,
        where the worker would fork a reloading child)."""
        if self.worker_command is None:
            raise QuickstartError("The Quick start never says to run manage.py db_worker")
        return self.start([*self.worker_command, "--no-reload"], self.tmp / "worker.log")

    def logs(self) -> str:
        parts = []
        for name in ("server.log", "worker.log"):
            path = self.tmp / name
            if path.exists():
                parts.append(f"--- {name}\n{read_log(path)[-6000:]}")
        return "\n".join(parts)

    def assert_no_errors(self) -> None:
        for name in ("server.log", "worker.log"):
            path = self.tmp / name
            if path.exists():
                text = read_log(path)
                assert not SERVER_ERRORS.search(text), f"{name} has errors:\n{text[-6000:]}"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows from the project's SQLite database (``startproject``'s ``db.sqlite3``)."""
        with contextlib.closing(sqlite3.connect(self.here / "db.sqlite3", timeout=20)) as db:
            rows: list[tuple[Any, ...]] = db.execute(sql).fetchall()
            return rows

    def task_results(self) -> list[tuple[Any, ...]]:
        """``(status, worker_ids, args_kwargs)`` of each task the database backend recorded
        (its table's name is the backend's business: found by its model's name)."""
        tables = self.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%dbtaskresult'"
        )
        assert len(tables) == 1, f"no single task result table: {tables}"
        return self.query(f'SELECT status, worker_ids, args_kwargs FROM "{tables[0][0]}"')

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                stop_process(process, timeout=5)
        if os.environ.get("BROWSER_KEEP_LOGS"):
            print(f"quick start project kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
