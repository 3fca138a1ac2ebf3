"""One record per stream, made when its producer ends, and the seam it goes through.

A record says what the stream cost and how it went, never what was asked or answered.
`UsageSink.record` is called on the event loop, once per stream, and must not block
or fail: a sink that writes to a database buffers and writes in the background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamRecord:
    stream_id: str
    request_id: str
    principal: str
    model: str  # the model that was asked for
    served_model: str  # the model that answered (a fallback may differ)
    # "done", or the code of the stream's error event: cancelled, abandoned, shutdown,
    # overloaded, incomplete_block, internal, …
    status: str
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    # The upstream did not report the whole usage (a cut, a cancel, a takeover): the
    # output tokens are counted from the deltas seen.
    estimated: bool
    cached: bool
    coalesced: int  # readers that attached to this stream instead of starting their own
    retries: int
    continuations: int
    ttft_ms: float | None  # from the producer's start to the first text, None if none
    duration_ms: float
    started_at: float  # epoch seconds
    finished_at: float


class UsageSink(Protocol):
    def record(self, record: StreamRecord) -> None:
        """Take one stream's record; never blocks, never raises."""
        ...

    async def aclose(self) -> None:
        """Write out whatever is still buffered."""
        ...


class NoUsage:
    """Records go nowhere (the ledger is off)."""

    def record(self, record: StreamRecord) -> None:
        return None

    async def aclose(self) -> None:
        return None


class UsageList:
    """Records kept in a list, for in-process tests and tools."""

    def __init__(self) -> None:
        self.records: list[StreamRecord] = []

    def record(self, record: StreamRecord) -> None:
        self.records.append(record)

    async def aclose(self) -> None:
        return None
