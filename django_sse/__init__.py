"""django_sse: stream the progress of long-running jobs to the browser as Server-Sent Events."""

from __future__ import annotations

from django_sse.publishing import apublish, publish

__version__ = "0.1.0"

__all__ = ["__version__", "apublish", "publish"]
