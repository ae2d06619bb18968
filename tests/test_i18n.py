"""The app's strings are translated, and the catalogues in django_sse/locale are complete and
compiled.

The catalogue checks use GNU gettext's msgfmt (Debian's ``gettext``): without it they are
skipped, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import gettext
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.apps import apps
from django.db import models
from django.utils import translation

from django_sse.admin import JobAdmin
from django_sse.models import Job, JobEvent

LOCALE_DIR = Path(__file__).resolve().parent.parent / "django_sse" / "locale"
CATALOGUES = sorted(LOCALE_DIR.glob("*/LC_MESSAGES/django.po"))
SHIPPED_LANGUAGES = {"de", "fr"}


def msgfmt() -> str:
    path = shutil.which("msgfmt")
    if path is None:
        message = "msgfmt (GNU gettext) is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
        pytest.skip(message)
    return path


def language_of(po: Path) -> str:
    return po.parent.parent.name


def user_facing_strings() -> list[str]:
    """The English text of every label the app shows: model and field names, status labels,
    the app's name and the admin's own columns."""
    strings = [
        apps.get_app_config("django_sse").verbose_name,
        JobAdmin.progress.short_description,  # type: ignore[attr-defined]
        *Job.Status.labels,
    ]
    for model in (Job, JobEvent):
        strings += [model._meta.verbose_name, model._meta.verbose_name_plural]
        # Primary keys are named by Django ("ID") or after the field ("id").
        strings += [field.verbose_name for field in model._meta.fields if not field.primary_key]
    with translation.override(None):
        return sorted({str(text) for text in strings})


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("fr", ["En attente", "En cours", "Réussie", "Échouée", "Annulée"]),
        ("de", ["Ausstehend", "Läuft", "Erfolgreich", "Fehlgeschlagen", "Abgebrochen"]),
    ],
)
def test_status_labels_follow_the_active_language(language: str, expected: list[str]) -> None:
    with translation.override(language):
        assert [str(label) for label in Job.Status.labels] == expected
        assert Job(status="succeeded").get_status_display() == expected[2]
    with translation.override("en"):
        assert Job(status="succeeded").get_status_display() == "Succeeded"


def test_model_admin_and_app_names_in_french() -> None:
    with translation.override("fr"):
        assert str(Job._meta.verbose_name) == "tâche"
        assert str(Job._meta.verbose_name_plural) == "tâches"
        assert str(JobEvent._meta.verbose_name_plural) == "événements de tâche"
        field = Job._meta.get_field("cancel_requested_at")
        assert isinstance(field, models.Field)
        assert str(field.verbose_name) == "annulation demandée"
        assert str(apps.get_app_config("django_sse").verbose_name) == (
            "Progression des tâches (SSE)"
        )
        assert str(JobAdmin.progress.short_description) == "progression"  # type: ignore[attr-defined]
        # __str__ names a job without a name, in the visitor's language.
        assert str(Job(status="running")) == "Tâche (En cours)"


def test_the_shipped_languages_have_catalogues() -> None:
    assert {language_of(po) for po in CATALOGUES} >= SHIPPED_LANGUAGES
    for po in CATALOGUES:
        assert po.with_suffix(".mo").is_file(), f"{po} is not compiled: run compilemessages"


@pytest.mark.parametrize("po", CATALOGUES, ids=language_of)
def test_catalogue_compiles_and_is_fully_translated(po: Path) -> None:
    run = subprocess.run(
        [msgfmt(), "--check", "--statistics", "-o", os.devnull, str(po)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # For example "29 translated messages." or "27 translated messages, 1 fuzzy translation,
    # 1 untranslated message."
    assert re.fullmatch(r"[1-9]\d* translated messages?\.", run.stderr.strip()), run.stderr
    # msgfmt's statistics leave out the header, which makemessages marks fuzzy.
    text = po.read_text("utf-8")
    assert re.findall(r"^#,.*\bfuzzy\b.*$", text, re.MULTILINE) == []
    assert f'"Language: {language_of(po)}\\n"' in text


@pytest.mark.parametrize("po", CATALOGUES, ids=language_of)
def test_compiled_catalogue_matches_its_po_file(po: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "django.mo"
    subprocess.run([msgfmt(), "-o", str(fresh), str(po)], check=True)
    with po.with_suffix(".mo").open("rb") as shipped, fresh.open("rb") as compiled:
        shipped_catalogue = gettext.GNUTranslations(shipped)._catalog  # type: ignore[attr-defined]
        compiled_catalogue = gettext.GNUTranslations(compiled)._catalog  # type: ignore[attr-defined]
    assert shipped_catalogue == compiled_catalogue, f"{po.with_suffix('.mo')} is stale"


class Missing(gettext.NullTranslations):
    """The fallback of a catalogue: records the messages it does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def gettext(self, message: str) -> str:
        self.messages.append(message)
        return message


@pytest.mark.parametrize("po", CATALOGUES, ids=language_of)
def test_every_user_facing_string_is_in_the_compiled_catalogue(po: Path) -> None:
    # A translation may equal its English text ("total", "Status"), so ask the catalogue
    # itself rather than compare the output with English.
    with po.with_suffix(".mo").open("rb") as mo:
        catalogue = gettext.GNUTranslations(mo)
    missing = Missing()
    catalogue.add_fallback(missing)
    for text in user_facing_strings():
        catalogue.gettext(text)
    assert missing.messages == [], "run makemessages and translate"
