"""The `tokens` dialect: each log entry as one unnamed SSE message.

    id: <stream_id>:<seq>
    data: <the entry's JSON, encoded once when it was appended>

The JSON is never re-encoded here: a batch of entries becomes one bytes object,
sent to the client in one write.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenrelay.streams.log import Entry

PING = b": ping\n\n"


def event_id_prefix(stream_id: str) -> bytes:
    return b"id: " + stream_id.encode() + b":"


def render_entries(prefix: bytes, entries: Sequence[Entry]) -> bytes:
    return b"".join([b"%b%d\ndata: %b\n\n" % (prefix, e.seq, e.payload) for e in entries])


def retry_field(retry_ms: int) -> bytes:
    return b"retry: %d\n" % retry_ms


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """`<stream_id>:<seq>` → (stream_id, seq); None when malformed."""
    stream_id, sep, seq = value.strip().rpartition(":")
    if not sep or not (seq.isascii() and seq.isdigit()) or len(seq) > 12:
        return None
    if not 0 < len(stream_id) <= 64 or not stream_id.isascii():
        return None
    if not all(c.isalnum() or c in "-_" for c in stream_id):
        return None
    return stream_id, int(seq)
