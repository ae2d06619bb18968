"""Smoke test of a built wheel, installed in a fresh virtualenv with nothing else.

Run by ``nox -s package`` as ``python -I package_smoke.py WHEEL SDIST SOURCE_PACKAGE`` from an
empty temporary directory, with the virtualenv's interpreter: ``-I`` keeps this file's directory
(and the checkout) off ``sys.path``, so ``django_sse`` can only come from the installed wheel.

It checks that the wheel and the sdist hold every file of the source package (templates, static
files, compiled translations, migrations, ``py.typed``...), and the sdist what it takes to run
the tests and build the docs; then it uses the installed files: it writes a tiny project
(settings, URLs, ASGI application) into the current directory, migrates a SQLite database,
creates a job owned by a user and publishes an event, and reads that event from the job's
stream served by a Daphne subprocess, with the owner's session cookie. Any failure exits 1 with
a message saying what is missing. Every wait is bounded; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gettext
import http.client
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

PACKAGE = "django_sse"
# Kinds of files a wheel of the app cannot do without, each matched by a path suffix or part.
REQUIRED_KINDS = {
    "py.typed marker": "django_sse/py.typed",
    "template": "/templates/django_sse/",
    "static file": "/static/django_sse/",
    "compiled translation": ".mo",
    "migration": "/migrations/0001_initial.py",
    "management command": "/management/commands/",
    "template tag library": "/templatetags/",
}
# Files of the sdist besides the package (paths inside its top directory).
SDIST_FILES = (
    "PKG-INFO",
    "setup.cfg",
    "pyproject.toml",
    "LICENSE",
    "README.rst",
    "CHANGELOG.rst",
    "noxfile.py",
    "docs/conf.py",
    "tests/settings.py",
    "example_project/settings.py",
)
# Source files that are not part of the package's contents.
NOT_SHIPPED_SUFFIXES = (".pyc", ".pyo")
SMOKE_LINE = "packaged and streamed"
ASGI_APPLICATION = "smoke_asgi:application"
STARTUP_SECONDS = 30
STREAM_SECONDS = 20

SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "package-smoke-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "django_sse",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "smoke_urls"
ASGI_APPLICATION = "smoke_asgi.application"
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "smoke.sqlite3",
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
    }
}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
DJANGO_SSE = {"POLL_SECONDS": 0.5}
USE_I18N = True
USE_TZ = True
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

URLS = """
from django.urls import include, path

urlpatterns = [path("sse/", include("django_sse.urls"))]
"""

ASGI = """
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smoke_settings")
application = get_asgi_application()
"""


class SmokeFailure(Exception):
    """What the installed package lacks or does wrong."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def source_files(source: Path) -> set[str]:
    """The package's files in the source tree, as paths inside a wheel."""
    return {
        path.relative_to(source.parent).as_posix()
        for path in source.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not path.name.endswith(NOT_SHIPPED_SUFFIXES)
    }


def check_wheel_contents(wheel: Path, source: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        every_name = archive.namelist()
    names = {name for name in every_name if name.startswith(f"{PACKAGE}/")}
    strays = sorted(
        {name.split("/", 1)[0] for name in every_name}
        - {PACKAGE}
        - {name.split("/", 1)[0] for name in every_name if ".dist-info/" in name}
    )
    check(not strays, "the wheel installs more than the package: " + ", ".join(strays))
    for kind, part in REQUIRED_KINDS.items():
        check(any(part in name for name in names), f"the wheel holds no {kind} ({part!r})")
    missing = sorted(source_files(source) - names)
    check(not missing, "files of the package missing from the wheel: " + ", ".join(missing))
    print(f"The wheel holds the package's {len(names)} files.")


def check_sdist_contents(sdist: Path, source: Path) -> None:
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    top = members[0].split("/", 1)[0]
    names = {name.split("/", 1)[1] for name in members if "/" in name}
    missing = sorted((set(SDIST_FILES) | source_files(source)) - names)
    check(not missing, "files missing from the sdist: " + ", ".join(missing))
    shipped_junk = sorted(name for name in names if "__pycache__" in name or ".sqlite3" in name)
    check(not shipped_junk, "the sdist holds build or run leftovers: " + ", ".join(shipped_junk))
    print(f"The sdist ({top}) holds the package and what its tests and docs need.")


def check_installed_copy() -> Path:
    """The installed package's directory, which must be in this virtualenv, not a checkout."""
    import django_sse

    location = Path(django_sse.__file__).resolve().parent
    check(
        Path(sys.prefix).resolve() in location.parents,
        f"django_sse comes from {location}, not from the virtualenv {sys.prefix}",
    )
    check((location / "py.typed").is_file(), "py.typed is not installed")
    return location


def write_project(directory: Path) -> None:
    for name, text in (("smoke_settings", SETTINGS), ("smoke_urls", URLS), ("smoke_asgi", ASGI)):
        (directory / f"{name}.py").write_text(textwrap.dedent(text).lstrip())


def check_runtime_files(location: Path) -> None:
    """Templates, static files, translations and migrations are found by Django."""
    from django.contrib.staticfiles import finders
    from django.core.management import call_command
    from django.template import TemplateDoesNotExist
    from django.template.loader import get_template
    from django.utils import translation

    for template in ("django_sse/progress.html", "django_sse/htmx/progress.html"):
        try:
            get_template(template)
        except TemplateDoesNotExist:
            raise SmokeFailure(f"the template {template} is not found") from None
    for static in ("django_sse/django_sse.js", "django_sse/django_sse.css"):
        check(finders.find(static), f"the static file {static} is not found")
    catalogs = sorted(location.glob("locale/*/LC_MESSAGES/django.mo"))
    check(catalogs, "no compiled translation (locale/*/LC_MESSAGES/django.mo) is installed")
    for catalog in catalogs:
        language = catalog.parent.parent.name
        with open(catalog, "rb") as f:
            messages = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        msgid, msgstr = next(
            (k, v) for k, v in messages.items() if isinstance(k, str) and k and v and k != v
        )
        with translation.override(language):
            check(
                translation.gettext(msgid) == msgstr,
                f"Django does not use the {language} translation of django_sse",
            )
    try:
        call_command("makemigrations", PACKAGE, "--check", "--dry-run", verbosity=0)
    except SystemExit:
        raise SmokeFailure("the models have changes that no migration in the wheel holds") from None
    print(f"Templates, static files, {len(catalogs)} translations and migrations are found.")


def prepare_job() -> tuple[str, str]:
    """Migrate, create a user and their job with one published event; returns the job's id
    and the owner's session cookie (``name=value``)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from django_sse import publish
    from django_sse.models import Job

    call_command("check", fail_level="ERROR")
    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user("smoke", password="smoke-password")
    job = Job.objects.create(name="Smoke", owner=user)
    job.start()
    publish(job, "log", {"line": SMOKE_LINE})
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    return str(job.pk), f"{cookie.key}={cookie.value}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(server: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        check(server.poll() is None, f"Daphne exited with status {server.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SmokeFailure(f"Daphne did not listen on port {port} within {STARTUP_SECONDS} s")


def read_event(port: int, job_id: str, cookie: str) -> str:
    """The stream's text up to the first event holding SMOKE_LINE (id and data lines)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STREAM_SECONDS)
    try:
        connection.request(
            "GET",
            f"/sse/jobs/{job_id}/events/",
            headers={"Cookie": cookie, "Accept": "text/event-stream"},
        )
        response = connection.getresponse()
        check(response.status == 200, f"the stream answered {response.status}")
        content_type = response.getheader("Content-Type", "")
        check(content_type.startswith("text/event-stream"), f"content type {content_type!r}")
        deadline = time.monotonic() + STREAM_SECONDS
        received = ""
        while time.monotonic() < deadline:
            chunk = response.read1(65536).decode("utf-8")
            check(chunk, f"the stream ended before the event:\n{received}")
            received += chunk
            for block in received.replace("\r\n", "\n").split("\n\n"):
                lines = block.split("\n")
                if any(line.startswith("id:") for line in lines) and any(
                    line.startswith("data:") and SMOKE_LINE in line for line in lines
                ):
                    return block
        raise SmokeFailure(f"no event within {STREAM_SECONDS} s:\n{received}")
    finally:
        connection.close()


def stream_from_daphne(directory: Path, job_id: str, cookie: str) -> str:
    port = free_port()
    log = directory / "daphne.log"
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="smoke_settings", PYTHONPATH=str(directory))
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), ASGI_APPLICATION],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(server, port)
        return read_event(port, job_id, cookie)
    except SmokeFailure as failure:
        raise SmokeFailure(f"{failure}\nDaphne's output:\n{log.read_text()}") from None
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} WHEEL SDIST SOURCE_PACKAGE_DIRECTORY", file=sys.stderr)
        return 2
    wheel, sdist, source = (Path(arg) for arg in argv[1:])
    directory = Path.cwd()
    try:
        check_wheel_contents(wheel, source)
        check_sdist_contents(sdist, source)
        location = check_installed_copy()
        write_project(directory)
        sys.path.insert(0, str(directory))
        os.environ["DJANGO_SETTINGS_MODULE"] = "smoke_settings"
        import django

        django.setup()
        check_runtime_files(location)
        job_id, cookie = prepare_job()
        event = stream_from_daphne(directory, job_id, cookie)
    except SmokeFailure as failure:
        print(f"Package smoke test FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"Streamed from the installed wheel through Daphne:\n{event}")
    print("Package smoke test passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
