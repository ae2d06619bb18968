"""The HTTP responses of the SSE endpoints, apart from the streams themselves: their headers,
CORS, and the short bodies that tell a browser when to come back or that a job has ended.

Also how the views (and ``snapshot.py``) put values taken from the request into log lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.utils.cache import patch_vary_headers

from django_sse.conf import conf
from django_sse.fragments import HTMX_REQUEST_HEADER, encode_end
from django_sse.sse import encode_retry

CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Longer values are not logged whole: they are untrusted input.
LOG_VALUE_CHARS = 40


def describe_user(user: object) -> str:
    """A user id for log lines, or "anonymous"."""
    if user is not None and getattr(user, "is_authenticated", False):
        return str(getattr(user, "pk", "?"))
    return "anonymous"


def untrusted(value: str) -> str:
    """A value from the request, fit for a log line: cut short and quoted (``%r``)."""
    return repr(value[:LOG_VALUE_CHARS])


def stream_headers(response: HttpResponseBase) -> HttpResponseBase:
    """``response`` with the headers of an event stream."""
    response["Content-Type"] = CONTENT_TYPE
    response["Cache-Control"] = "no-cache"
    # nginx: pass each event through at once instead of buffering the response.
    response["X-Accel-Buffering"] = "no"
    # GZipMiddleware (and most proxies) leave a response alone once it names an encoding.
    response["Content-Encoding"] = "identity"
    return response


def stream_response(request: HttpRequest, body: Any) -> HttpResponseBase:
    """A streaming response with the headers of an event stream."""
    return allow_origin(request, stream_headers(StreamingHttpResponse(body)))


def html_response(response: HttpResponseBase) -> HttpResponseBase:
    """``response``, varying with ``HX-Request``."""
    # The fragments' form depends on HX-Request (htmx 4's partials or htmx 2's named events).
    patch_vary_headers(response, [HTMX_REQUEST_HEADER])
    return response


async def ended_body(status: str) -> AsyncIterator[bytes]:
    """The whole body for a job that has ended: when to come back, and the ``end`` event."""
    yield encode_retry(conf.RETRY_MILLISECONDS) + encode_end(status)


async def retry_later_body() -> AsyncIterator[bytes]:
    """A body that only tells the browser when to come back."""
    yield encode_retry(conf.RETRY_MILLISECONDS)


def allow_origin(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """CORS for the origins in ``CORS_ALLOWED_ORIGINS`` (with credentials: the stream is
    authorized by the session cookie). Other origins get no CORS header and cannot read it."""
    patch_vary_headers(response, ["Origin"])
    origin = request.headers.get("Origin")
    if origin and origin in conf.CORS_ALLOWED_ORIGINS:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Credentials"] = "true"
    return response
