"""A Server-Sent Events parser that follows the WHATWG HTML rules, written for the tests.

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parser:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_event_id: str = ""
    _data: str = ""
    _type: str = ""
    _buffer: str = ""
    _started: bool = False

    def feed(self, chunk: bytes | str) -> list[Event]:
        text = chunk.decode("utf-8") if isinstance(chunk, bytes) else chunk
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        self._buffer += text
        before = len(self.events)
        while True:
            match = _LINE.search(self._buffer)
            if match is None:
                break
            # A lone CR at the very end might be the first half of CRLF: wait for more.
            if match.group() == "\r" and match.end() == len(self._buffer):
                break
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            self._line(line)
        return self.events[before:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id" and "\x00" not in value:
            self.last_event_id = value
        elif name == "retry" and value and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> None:
        if self._data == "":
            self._type = ""
            return
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        self.events.append(Event(self._type or "message", data, self.last_event_id))
        self._data = ""
        self._type = ""
