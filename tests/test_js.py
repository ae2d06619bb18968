"""The browser client's unit tests (``tests/js/``, Node's built-in runner), run from pytest.

They need Node 20+ and no npm package: ``tests/js/support/`` fakes the browser APIs the client
uses (a DOM, EventSource, timers), and Node's runner runs only the ``*.test.mjs`` files.
Without ``node`` the test is skipped, except under ``CI=true``, where it fails: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def node() -> str:
    path = shutil.which("node")
    if path is None:
        message = "Node.js (node) is not installed: the client's tests in tests/js/ need it"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
        pytest.skip(message)
    return path


def test_the_client_passes_its_node_tests() -> None:
    result = subprocess.run(
        [node(), "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
