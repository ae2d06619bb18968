"""The browser client's JavaScript tests, run from pytest.

- ``tests/js/*.test.mjs``: unit tests of the classic script and of the ES module, on Node's
  built-in runner. They need Node 20+ and no npm package: ``tests/js/support/`` fakes the
  browser APIs the client uses (a DOM, EventSource, timers; for the tab protocol, tabs of one
  profile sharing BroadcastChannels and Web Locks), and Node's runner runs only the
  ``*.test.mjs`` files.
- ``tests/js/types/``: a front-end project's TypeScript using the client, which depends on it by
  path (``"django-sse-jobs": "file:.../django_sse/static/django_sse"``, installed by npm without
  the registry), checked by ``tsc --noEmit`` against ``django_sse.d.ts``. TypeScript comes from
  the npm registry, by exact version, installed once into a cache directory (not the checkout):
  ``$DJANGO_SSE_NODE_CACHE``, else ``~/.cache/django-sse-jobs/node``.

Without ``node`` or ``npm``, or when TypeScript cannot be installed, the tests are skipped,
except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "django_sse" / "static" / "django_sse"
TYPES_EXAMPLE = Path(__file__).resolve().parent / "js" / "types"
# TypeScript 7 (the native compiler, shipped in the npm package for each platform) runs on Node 20.
TYPESCRIPT_VERSION = "7.0.2"
NPM_SECONDS = 150
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> None:
    if CI:
        pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
    pytest.skip(message)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"Node.js ({name}) is not installed: the client's tests in tests/js/ need it")
    assert path is not None
    return path


def node_cache() -> Path:
    configured = os.environ.get("DJANGO_SSE_NODE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "django-sse-jobs" / "node"


def npm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("npm"), *args, "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=NPM_SECONDS,
        check=False,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )


def typescript_compiler() -> Path:
    """``tsc`` of TYPESCRIPT_VERSION, installed into the cache on first use."""
    cache = node_cache()
    home = cache / f"typescript-{TYPESCRIPT_VERSION}"
    tsc = home / "node_modules" / ".bin" / "tsc"
    if tsc.exists():
        return tsc
    cache.mkdir(parents=True, exist_ok=True)
    # Installed beside, then renamed: a run stopped half-way leaves no half-installed compiler.
    staging = Path(tempfile.mkdtemp(prefix=f"{home.name}.", dir=cache))
    try:
        done = npm(
            "install",
            "--prefix",
            str(staging),
            "--no-save",
            "--no-package-lock",
            f"typescript@{TYPESCRIPT_VERSION}",
            cwd=staging,
        )
        if done.returncode != 0:
            unavailable(
                f"typescript@{TYPESCRIPT_VERSION} could not be installed from the npm registry "
                f"into {cache}: {(done.stdout + done.stderr)[-1500:]}"
            )
        try:
            staging.rename(home)
        except OSError:
            assert tsc.exists(), f"{home} exists without {tsc}: remove it"  # another run won
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tsc


def front_end_project(directory: Path) -> Path:
    """A project that depends on the client by path, with the TypeScript that uses it."""
    for source in TYPES_EXAMPLE.iterdir():
        shutil.copy(source, directory / source.name)
    package = {
        "private": True,
        "type": "module",
        "dependencies": {"django-sse-jobs": f"file:{STATIC}"},
    }
    (directory / "package.json").write_text(json.dumps(package, indent=2))
    done = npm("install", "--offline", cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (directory / "node_modules" / "django-sse-jobs" / "django_sse.d.ts").is_file()
    return directory


def test_the_client_passes_its_node_tests() -> None:
    result = subprocess.run(
        [tool("node"), "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The ES module's own tests ran too, and the tab protocol's.
    assert "imported without a page" in result.stdout
    assert "the leader's tab closes" in result.stdout


@pytest.mark.timeout(NPM_SECONDS + 60)
@pytest.mark.parametrize("resolution", ["bundler", "nodenext"])
def test_the_types_check_a_front_end_build(resolution: str, tmp_path: Path) -> None:
    """tsc --noEmit accepts the example's uses of the client and rejects each of its marked
    misuses (an ``@ts-expect-error`` that finds no error fails), as bundlers and as Node resolve
    the package."""
    tool("node")
    tsc = typescript_compiler()
    project = front_end_project(tmp_path)
    options = ["--module", resolution, "--moduleResolution", resolution]
    if resolution == "bundler":
        options[1] = "esnext"
    result = subprocess.run(
        [str(tsc), "--noEmit", "--pretty", "false", "-p", "tsconfig.json", *options],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
