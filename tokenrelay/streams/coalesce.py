"""Coalescing: an identical request that arrives while the first is still generating
attaches to the first stream as one more reader, instead of a second upstream call.

Identical means the same validated request (model, system, messages, tools, sampling,
limits), compared by a hash of its canonical JSON, within a scope: the same caller
(`principal`, the default: a retry, a double submit) or anyone (`global`). The caller
gets the first stream's id and reads it from the start, so it sees the whole answer;
the cost is booked once, on the first stream's record, with the number of requests
that joined it. Coalescing holds within one instance: a request that lands on
another instance generates its own answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Literal

import orjson

from tokenrelay.providers.base import GenerationRequest

Scope = Literal["off", "principal", "global"]


def request_key(request: GenerationRequest) -> bytes:
    # orjson writes a dataclass's fields in their declared order; nested dicts sorted.
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).digest()


class Coalescer:
    def __init__(self, scope: Scope, guest_ttl: float) -> None:
        self.scope = scope
        self._guest_ttl = guest_ttl
        # key → (stream id, owner, resolved once the stream exists in the log)
        self._running: dict[tuple[str, bytes], tuple[str, str, asyncio.Future[None]]] = {}
        self._keys: dict[str, tuple[str, bytes]] = {}
        self._joined: dict[str, int] = {}
        # Principals reading a stream they do not own (global scope), while its log lives.
        self._guests: dict[str, set[str]] = {}

    def key(
        self,
        request: GenerationRequest,
        owner: str,
        restartable: bool = True,
        fallback: bool = True,
    ) -> tuple[str, bytes] | None:
        """`restartable` is part of the key: a reader that cannot be told to reset must
        not join a stream that may reset, nor the other way round; and `fallback`: a
        request that wants its own model only must not get another's answer."""
        if self.scope == "off":
            return None
        scope = owner if self.scope == "principal" else "*"
        suffix = (b"" if restartable else b"\x00fixed") + (b"" if fallback else b"\x00own")
        return (scope, request_key(request) + suffix)

    async def join(self, key: tuple[str, bytes], principal: str) -> str | None:
        """The running stream an identical request joins, if there is one, once it
        exists in the log (raising what its creation raised, if it failed)."""
        running = self._running.get(key)
        if running is None:
            return None
        stream_id, owner, ready = running
        await asyncio.shield(ready)
        self._joined[stream_id] = self._joined.get(stream_id, 0) + 1
        if owner != principal:
            self._guests.setdefault(stream_id, set()).add(principal)
        return stream_id

    def starting(self, key: tuple[str, bytes], stream_id: str, owner: str) -> asyncio.Future[None]:
        """A stream for `key` is being created: identical requests wait for it, not
        start their own. Resolve the future once it exists (or fail it, then `ended`)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = (stream_id, owner, ready)
        self._keys[stream_id] = key
        return ready

    def ended(self, stream_id: str) -> int:
        """The stream stopped generating; returns how many requests joined it."""
        key = self._keys.pop(stream_id, None)
        running = self._running.get(key) if key is not None else None
        if key is not None and running is not None and running[0] == stream_id:
            del self._running[key]
        if stream_id in self._guests:
            loop = asyncio.get_running_loop()
            loop.call_later(self._guest_ttl, self._guests.pop, stream_id, None)
        return self._joined.pop(stream_id, 0)

    def may_read(self, stream_id: str, principal: str) -> bool:
        """Whether `principal` joined `stream_id` without owning it (global scope)."""
        return principal in self._guests.get(stream_id, ())
