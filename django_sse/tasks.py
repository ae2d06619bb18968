"""Running a job from a task: Celery, Django's task framework, a thread, anything.

``tracks_job`` wraps a function whose first argument is the job (or its id). The job is
started, succeeds with the return value, fails on an exception (the traceback is logged; the
browser gets a safe message) and is cancelled when the function raises ``CancelRequested``
(``job.raise_if_cancel_requested()``). A worker stopped by ``KeyboardInterrupt`` or
``SystemExit`` fails the job (so it is not left "running") and the exception goes on::

    @shared_task                      # or Django's @task
    @tracks_job
    def build_report(job, month):
        for i, row in enumerate(rows(month), 1):
            job.raise_if_cancel_requested()
            job.set_progress(i, total)
        return {"rows": total}

A return value that cannot be the job's result (not JSON, or over ``MAX_DATA_BYTES``) fails the
job with the safe message too, rather than leaving it "running" for ever. The function did
return, but its result is lost and the job failed, so the task must not look like a success:
the ``EventDataNotSerializable`` or ``EventDataTooLarge`` goes on to the task framework like an
exception of the function would (``reraise=False`` swallows it and returns None).
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from asgiref.sync import sync_to_async

from django_sse.exceptions import (
    CancelRequested,
    EventDataNotSerializable,
    EventDataTooLarge,
    JobFinished,
)
from django_sse.models import Job
from django_sse.recording import job_id_of

logger = logging.getLogger("django_sse")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_ERROR_MESSAGE = "The job failed."
INTERRUPTED_MESSAGE = "The worker stopped before the job was done."


def _load(job: Job | uuid.UUID | str) -> Job:
    return job if isinstance(job, Job) else Job.objects.get(pk=job_id_of(job, Job))


def _begin(job: Job) -> bool:
    """Start the job; False if it ended before the task ran (cancelled while queued)."""
    if job.is_finished:
        logger.info("Job %s had already %s; its task does nothing.", job.pk, job.status)
        return False
    if job.status == "pending":
        try:
            job.start()
        except JobFinished:
            return False
    return True


def _end(job: Job, outcome: str, value: Any, error_message: str) -> None:
    """End the job as ``outcome``; when ``value`` cannot be its result, fail it instead and
    raise the ``EventDataNotSerializable`` or ``EventDataTooLarge``."""
    try:
        if outcome == "succeeded":
            try:
                job.succeed(value)
            except (EventDataNotSerializable, EventDataTooLarge) as exc:
                # Never the result itself: these messages hold a size, or the type that has no
                # JSON form.
                logger.error(
                    "Job %s failed: its result cannot be stored. %s: %s",
                    job.pk,
                    type(exc).__name__,
                    exc,
                )
                job.fail(error_message)
                raise
        elif outcome == "cancelled":
            job.cancel()
        else:
            job.fail(error_message)
    except JobFinished:
        pass  # the function ended the job itself


class _Decorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[Concatenate[Job, P], Coroutine[Any, Any, R]]
    ) -> Callable[Concatenate[Job | uuid.UUID | str, P], Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(
        self, func: Callable[Concatenate[Job, P], R]
    ) -> Callable[Concatenate[Job | uuid.UUID | str, P], R | None]: ...


@overload
def tracks_job(
    func: Callable[Concatenate[Job, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Job | uuid.UUID | str, P], Coroutine[Any, Any, R | None]]: ...


@overload
def tracks_job(
    func: Callable[Concatenate[Job, P], R],
) -> Callable[Concatenate[Job | uuid.UUID | str, P], R | None]: ...


@overload
def tracks_job(
    func: None = None, *, error_message: str = ..., reraise: bool = ...
) -> _Decorator: ...


def tracks_job(
    func: Callable[..., Any] | None = None,
    *,
    error_message: str = DEFAULT_ERROR_MESSAGE,
    reraise: bool = True,
) -> Any:
    """Decorate a task function whose first argument is the job.

    ``error_message`` is what the browser sees when the function raises or returns a value
    that cannot be the job's result (never the exception text, which may hold secrets).
    ``reraise`` (default True) lets the exception reach the task framework, so it records the
    task as failed too. Async functions work the same way.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(job: Any, *args: Any, **kwargs: Any) -> Any:
                loaded = await sync_to_async(_load)(job)
                if not await sync_to_async(_begin)(loaded):
                    return None
                try:
                    result = await function(loaded, *args, **kwargs)
                except CancelRequested:
                    await sync_to_async(_end)(loaded, "cancelled", None, error_message)
                    return None
                except (KeyboardInterrupt, SystemExit):
                    # The worker is going down: don't leave the job "running" forever.
                    await sync_to_async(_end)(loaded, "failed", None, INTERRUPTED_MESSAGE)
                    raise
                except Exception:
                    logger.exception("Job %s failed.", loaded.pk)
                    await sync_to_async(_end)(loaded, "failed", None, error_message)
                    if reraise:
                        raise
                    return None
                try:
                    await sync_to_async(_end)(loaded, "succeeded", result, error_message)
                except (EventDataNotSerializable, EventDataTooLarge):
                    if reraise:
                        raise
                    return None
                return result

            return async_wrapper

        @functools.wraps(function)
        def wrapper(job: Any, *args: Any, **kwargs: Any) -> Any:
            loaded = _load(job)
            if not _begin(loaded):
                return None
            try:
                result = function(loaded, *args, **kwargs)
            except CancelRequested:
                _end(loaded, "cancelled", None, error_message)
                return None
            except (KeyboardInterrupt, SystemExit):
                # The worker is going down: don't leave the job "running" forever.
                _end(loaded, "failed", None, INTERRUPTED_MESSAGE)
                raise
            except Exception:
                logger.exception("Job %s failed.", loaded.pk)
                _end(loaded, "failed", None, error_message)
                if reraise:
                    raise
                return None
            try:
                _end(loaded, "succeeded", result, error_message)
            except (EventDataNotSerializable, EventDataTooLarge):
                if reraise:
                    raise
                return None
            return result

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
