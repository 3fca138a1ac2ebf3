"""The embedded store: stream logs in this process's memory (one gateway process)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tokenrelay.streams.log import TERMINAL_KINDS, Entry, StreamMeta


class _Stream:
    __slots__ = ("changed", "entries", "finished", "meta")

    def __init__(self, meta: StreamMeta) -> None:
        self.meta = meta
        self.entries: list[Entry] = []
        self.finished = False
        # Readers wait on this event; an append sets it and puts a fresh one in place,
        # so one `set()` wakes every reader of the stream at once.
        self.changed = asyncio.Event()


class MemoryLog:
    def __init__(self, stream_ttl: float) -> None:
        self._ttl = stream_ttl
        self._streams: dict[str, _Stream] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    async def create(self, meta: StreamMeta) -> None:
        self._streams[meta.stream_id] = _Stream(meta)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        stream = self._streams.get(stream_id)
        return stream.meta if stream else None

    async def append(self, stream_id: str, kind: str, data: dict[str, Any]) -> int:
        stream = self._streams[stream_id]
        if stream.finished:
            raise RuntimeError(f"stream {stream_id} already ended")
        seq = len(stream.entries)
        stream.entries.append(Entry(seq, kind, orjson.dumps(data)))
        if kind in TERMINAL_KINDS:
            stream.finished = True
            loop = asyncio.get_running_loop()
            self._expiry[stream_id] = loop.call_later(self._ttl, self._drop, stream_id)
        changed, stream.changed = stream.changed, asyncio.Event()
        changed.set()
        return seq

    async def read(self, stream_id: str, after: int, wait: float) -> list[Entry] | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if len(stream.entries) > after + 1 or stream.finished:
            return stream.entries[after + 1 :]
        try:
            async with asyncio.timeout(wait):
                await stream.changed.wait()
        except TimeoutError:
            return []
        return stream.entries[after + 1 :]

    async def claim_idempotency_key(
        self, scope: str, key: str, stream_id: str, fingerprint: str
    ) -> tuple[str, str]:
        return self._idempotency.setdefault((scope, key), (stream_id, fingerprint))

    async def ping(self) -> bool:
        return True

    def _drop(self, stream_id: str) -> None:
        self._expiry.pop(stream_id, None)
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.meta.idempotency_key is not None:
            self._idempotency.pop((stream.meta.owner, stream.meta.idempotency_key), None)

    async def aclose(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._streams.clear()
        self._idempotency.clear()
