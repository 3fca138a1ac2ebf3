"""What the contract promises, asserted in one place each: Claude's error shape, and a
stream's events forming one whole answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httpx


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    """`response` is Claude's error JSON with this status and type; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    return str(body["error"]["message"])


class TokensEvent(Protocol):
    """A `tokens` dialect event as either reader sees it: the tests' own httpx-sse
    reader (`tests.support.streams.Event`) or the Python client's `StreamEvent`."""

    @property
    def seq(self) -> int: ...

    @property
    def data(self) -> dict[str, Any]: ...


def assert_whole_answer(events: Sequence[TokensEvent], expected: str) -> None:
    """`events` (however many connections they were read over) are one complete answer:
    the start event, seqs 0..n-1 without gap or duplicate, exactly one final event, last
    and `done`, and the text is exactly `expected`."""
    assert [e.seq for e in events] == list(range(len(events)))  # no gap, no duplicate
    assert "stream_id" in events[0].data
    finals = [i for i, e in enumerate(events) if "done" in e.data or "error" in e.data]
    assert finals == [len(events) - 1], [events[i].data for i in finals]
    assert events[-1].data["done"] is True
    assert "".join(e.data["token"] for e in events if "token" in e.data) == expected
