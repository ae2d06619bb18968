"""django_sse: stream the progress of long-running jobs to the browser as Server-Sent Events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_sse.publishing import apublish, apublish_many, publish, publish_many

__version__ = "0.1.0"

__all__ = ["__version__", "apublish", "apublish_many", "publish", "publish_many"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): publish() needs the models, and Django imports this package (to read its
    # AppConfig) before the app registry is ready, when no model can be imported yet.
    if name in ("publish", "apublish", "publish_many", "apublish_many"):
        from django_sse import publishing

        return getattr(publishing, name)
    raise AttributeError(f"module 'django_sse' has no attribute {name!r}")
