"""Sphinx configuration of the django-sse-jobs documentation (``nox -s docs`` builds it)."""

from __future__ import annotations

import os
import sys

import django
from django.conf import settings

# The package from this checkout, even without "pip install -e .".
sys.path.insert(0, os.path.abspath(".."))

# autodoc imports django_sse.models: the app registry must be ready. Just enough settings for
# that; nothing here touches the database.
if not settings.configured:
    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django_sse",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
django.setup()

import django_sse  # noqa: E402  (needs the settings above)

project = "django-sse-jobs"
copyright = "2026, the django-sse-jobs authors"
author = "the django-sse-jobs authors"
release = django_sse.__version__
version = release

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
# Annotations stay in the signature, with short names (``Job``, not ``django_sse.models.Job``).
autodoc_typehints = "signature"
autodoc_typehints_format = "short"

html_theme = "furo"
html_title = f"django-sse-jobs {release}"
