"""Incremental HTTP/1.1 response reader and Server-Sent Events parser for the load harness.

Cheap on purpose: one ``feed()`` per received chunk, no per-byte Python loop on the fast path.
The SSE parser follows the WHATWG rules: a leading BOM is stripped, lines end with CRLF, a lone
LF or a lone CR (also split across chunks), a blank line dispatches, ``:`` starts a comment,
``data`` lines join with LF, an empty data buffer dispatches nothing, the type defaults to
``message``, an ``id`` containing NUL is ignored and the last id persists, ``retry`` counts only
if it is all ASCII digits.
"""

from __future__ import annotations

import re

_LINES = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"


class SSEParser:
    __slots__ = (
        "_buf",
        "_cr",
        "_data",
        "_event",
        "_started",
        "comments",
        "last_id",
        "retry",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous chunk ended with CR: a LF at the start is its pair
        self._data: list[bytes] = []
        self._event = b""
        self._started = False
        self.last_id = ""
        self.retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[tuple[str, str, str]]:
        """Parse ``chunk``; return the events it completes as ``(type, data, last_id)``."""
        if not self._started:
            chunk = self._buf + chunk
            self._buf = b""
            if len(chunk) < 3 and BOM.startswith(chunk):
                self._buf = chunk
                return []
            self._started = True
            if chunk.startswith(BOM):
                chunk = chunk[3:]
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                # A complete line; a LF in the next chunk belongs to this CR.
                self._cr = True
                lines = _LINES.split(buf[:-1])
                lines.append(b"")  # the CR terminated the last line: nothing left over
                self._buf = b""
                rest_is_empty = True
            else:
                lines = _LINES.split(buf)
                self._buf = lines.pop()
                rest_is_empty = False
            if rest_is_empty:
                lines.pop()
        else:
            lines = buf.split(b"\n")
            self._buf = lines.pop()
        out: list[tuple[str, str, str]] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(
                        (
                            self._event.decode("utf-8", "replace") or "message",
                            b"\n".join(self._data).decode("utf-8", "replace"),
                            self.last_id,
                        )
                    )
                self._data = []
                self._event = b""
                continue
            if line[0] == 58:  # ":"
                self.comments += 1
                continue
            name, sep, value = line.partition(b":")
            if sep and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\x00" not in value:
                    self.last_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value and value.isdigit():
                self.retry = int(value)
        return out


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder (extensions and trailers ignored)."""

    __slots__ = ("_buf", "_need", "_skip", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._need = 0  # bytes of chunk data still expected
        self._skip = 0  # bytes of the CRLF after a chunk still to drop
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            if self._need:
                take = min(self._need, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._need -= take
                if not self._need:
                    self._skip = 2
                continue
            if self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                self._buf = buf[pos:]
                break
            size = int(buf[pos:end].split(b";", 1)[0].strip() or b"0", 16)
            pos = end + 2
            if size == 0:
                self.done = True
                break
            self._need = size
        return b"".join(out) if len(out) != 1 else out[0]
