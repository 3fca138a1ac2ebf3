"""The embedded store: stream logs in this process's memory (one gateway process)."""

from __future__ import annotations

import asyncio

from tokenrelay.events import TERMINAL_TYPES, Event
from tokenrelay.streams.fanout import Tail
from tokenrelay.streams.log import Entry, Opening, StreamMeta


class MemoryLog:
    def __init__(self, stream_ttl: float) -> None:
        self._ttl = stream_ttl
        self._streams: dict[str, tuple[StreamMeta, Tail]] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    async def create(self, meta: StreamMeta) -> None:
        self._streams[meta.stream_id] = (meta, Tail())

    async def meta(self, stream_id: str) -> StreamMeta | None:
        stream = self._streams.get(stream_id)
        return stream[0] if stream else None

    async def append(self, stream_id: str, event: Event) -> int:
        tail = self._streams[stream_id][1]
        if tail.finished:
            raise RuntimeError(f"stream {stream_id} already ended")
        seq = len(tail.entries)
        tail.push(Entry(seq, event))
        if type(event) in TERMINAL_TYPES:
            loop = asyncio.get_running_loop()
            self._expiry[stream_id] = loop.call_later(self._ttl, self._drop, stream_id)
        return seq

    async def set_opening(self, stream_id: str, opening: Opening) -> None:
        self._streams[stream_id][0].opening = opening

    async def read(
        self, stream_id: str, after: int, wait: float, hold: float = 0.0
    ) -> list[Entry] | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        tail = stream[1]
        entries = await tail.read(after, wait, hold)
        return entries if entries or not tail.finished else None

    def wake_readers(self) -> None:
        for _, tail in self._streams.values():
            tail.wake()

    async def claim_idempotency_key(
        self, scope: str, key: str, stream_id: str, fingerprint: str
    ) -> tuple[str, str]:
        return self._idempotency.setdefault((scope, key), (stream_id, fingerprint))

    async def ping(self) -> bool:
        return True

    def _drop(self, stream_id: str) -> None:
        self._expiry.pop(stream_id, None)
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream[0].idempotency_key is not None:
            self._idempotency.pop((stream[0].owner, stream[0].idempotency_key), None)

    async def aclose(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._streams.clear()
        self._idempotency.clear()
