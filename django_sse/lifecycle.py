"""Lifecycle helpers mixed into ``Job``: start, progress, succeed, fail, cancel.

Each one updates the job row and records an event of a fixed type in one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from django_sse import publishing as _publish

if TYPE_CHECKING:
    from django_sse.models import JobEvent


class JobLifecycleMixin:
    def start(self) -> JobEvent:
        """Mark the job running and record a ``started`` event."""
        from django_sse.models import JobStatus

        entry = _publish.Entry("started", {}, {"status": JobStatus.RUNNING})
        return _publish.record(self, [entry])[-1]  # type: ignore[arg-type]

    def set_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        """Record progress; updates closer together than the progress interval are coalesced
        (then None is returned and the value is written later, never lost)."""
        return _publish.set_progress(self, current, total, message)  # type: ignore[arg-type]

    def flush_progress(self) -> JobEvent | None:
        """Write coalesced progress now, if any is pending."""
        return _publish.flush_progress(self)  # type: ignore[arg-type]

    def succeed(self, result: Any = None) -> JobEvent:
        """End the job with ``result`` and record a ``succeeded`` event."""
        stored, _text = _publish.encode_data(result)
        entry = _publish.terminal_entry("succeeded", {"result": stored}, {"result": stored})
        return _publish.record(self, [entry])[-1]  # type: ignore[arg-type]

    def fail(self, error: str = "") -> JobEvent:
        """End the job with an error message (shown to the browser: keep it safe)."""
        entry = _publish.terminal_entry("failed", {"error": str(error)}, {"error": str(error)})
        return _publish.record(self, [entry])[-1]  # type: ignore[arg-type]

    def cancel(self) -> JobEvent:
        """End the job as cancelled."""
        entry = _publish.terminal_entry("cancelled", {}, {})
        return _publish.record(self, [entry])[-1]  # type: ignore[arg-type]

    async def astart(self) -> JobEvent:
        return await sync_to_async(self.start)()

    async def aset_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        return await _publish.aset_progress(self, current, total, message)  # type: ignore[arg-type]

    async def aflush_progress(self) -> JobEvent | None:
        return await sync_to_async(self.flush_progress)()

    async def asucceed(self, result: Any = None) -> JobEvent:
        return await sync_to_async(self.succeed)(result)

    async def afail(self, error: str = "") -> JobEvent:
        return await sync_to_async(self.fail)(error)

    async def acancel(self) -> JobEvent:
        return await sync_to_async(self.cancel)()
