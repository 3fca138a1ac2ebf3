"""The text a benchmark stream delivered, read back from its raw HTTP response.

The bench's reader only counts markers while a phase runs; the exact text is taken
afterwards from the bytes it kept, so that checking it costs nothing measured. Both
paths are parsed in full: the HTTP/1.1 chunked framing (a chunk may split an SSE
line), then each `data:` line's JSON, in Claude's event stream (direct) or in the
gateway's tokens dialect.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson


class BadResponse(ValueError):
    """The bytes are not a whole HTTP response with an event stream in it."""


def http_body(raw: Iterable[bytes]) -> bytes:
    """The body of one HTTP/1.1 response, its chunked framing undone."""
    data = b"".join(raw)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise BadResponse("no end of headers")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise BadResponse(status.decode("latin-1"))
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out: list[bytes] = []
    at = 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            raise BadResponse("a chunk's size line is cut")
        size = int(body[at:line_end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        if len(body) < start + size + 2:
            raise BadResponse("a chunk is cut")
        out.append(body[start : start + size])
        at = start + size + 2


def _data_lines(body: bytes) -> Iterable[bytes]:
    for line in body.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()


def claude_text(raw: Iterable[bytes]) -> str:
    """The text of a Claude event stream: every `text_delta`, in order."""
    parts: list[str] = []
    for data in _data_lines(http_body(raw)):
        event = orjson.loads(data)
        if event.get("type") == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta":
                parts.append(delta["text"])
    return "".join(parts)


def tokens_text(raw: Iterable[bytes]) -> str:
    """The text of a tokens-dialect stream: every token, in order, after the last reset."""
    parts: list[str] = []
    for data in _data_lines(http_body(raw)):
        event = orjson.loads(data)
        if "token" in event:
            parts.append(event["token"])
        elif event.get("reset"):
            parts.clear()  # the answer starts again from nothing
    return "".join(parts)
