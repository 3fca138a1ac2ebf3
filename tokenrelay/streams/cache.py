"""The response cache: a finished answer replayed, at full speed, to an identical
request within the TTL (off unless `TOKENRELAY_CACHE_TTL` is set: answers are not
deterministic, so the operator opts in).

Identical means the same canonical request (model, system, messages, tools, sampling,
limits), within a scope: the same caller (the default) or anyone (`global`). Only an
answer that ended as asked is kept (`end_turn`, `tool_use`, `stop_sequence`): never an
error, a cut, a cancel or a `max_tokens` truncation; and a request with a temperature
above 0 is not served from the cache unless `TOKENRELAY_CACHE_SAMPLED` says so. A
replay is a stream of its own (its own id and event ids) whose `done` says
`cached: true` and costs nothing.

The store keeps answers as the events between `Start` and the terminal one, in memory
(a bounded LRU, by bytes) or in Redis (each with its TTL).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, cast

import orjson

from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Queued,
    Reset,
    Start,
    Text,
    event_fields,
    event_from,
    kind_of,
)
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.streams.coalesce import request_key
from tokenrelay.streams.log import Entry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

CACHEABLE_STOPS = frozenset({"end_turn", "tool_use", "stop_sequence"})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    events: tuple[Event, ...]  # what came between Start and Done
    stop_reason: str | None

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> CachedAnswer | None:
        """The answer a finished log holds, if it may be kept."""
        done = entries[-1].event if entries else None
        if not isinstance(done, Done) or done.cached or done.stop_reason not in CACHEABLE_STOPS:
            return None
        kept: list[Event] = []
        for entry in entries[:-1]:
            event = entry.event
            if type(event) is Reset:
                kept.clear()  # what followed a restart is the answer
            elif type(event) not in (Start, Queued, Failed):
                kept.append(event)
        return cls(tuple(kept), done.stop_reason)

    def size(self) -> int:
        return sum(len(e) if type(e) is Text else 200 for e in self.events) + 100


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl: float = 0.0  # 0 = off
    scope: Literal["principal", "global"] = "principal"
    sampled: bool = False  # serve requests with temperature > 0 from the cache too

    def key(self, request: GenerationRequest, owner: str) -> bytes | None:
        """The cache key of a request, or None when it may not use the cache."""
        if not self.ttl:
            return None
        # Claude samples at temperature 1 unless told otherwise: only an answer asked for
        # at temperature 0 is the answer the same request would get again.
        if request.temperature != 0 and not self.sampled:
            return None
        scope = owner if self.scope == "principal" else "*"
        return scope.encode() + b"\x00" + request_key(request)


class ResponseCache(Protocol):
    async def get(self, key: bytes) -> CachedAnswer | None: ...

    async def put(self, key: bytes, answer: CachedAnswer, ttl: float) -> None: ...


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[bytes, tuple[float, int, CachedAnswer]] = OrderedDict()

    async def get(self, key: bytes) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, size, answer = found
        if time.monotonic() >= expires:
            del self._entries[key]
            self._bytes -= size
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: bytes, answer: CachedAnswer, ttl: float) -> None:
        size = answer.size()
        if size > self._max:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (time.monotonic() + ttl, size, answer)
        self._bytes += size
        while self._bytes > self._max:
            _, (_, dropped, _) = self._entries.popitem(last=False)
            self._bytes -= dropped


class RedisCache:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get(self, key: bytes) -> CachedAnswer | None:
        from tokenrelay.streams import keys
        from tokenrelay.streams.redis import store_errors

        with store_errors():
            raw = cast(bytes | None, await self._redis.get(keys.cache_key(key)))
        if raw is None:
            return None
        data = orjson.loads(raw)
        events = tuple(event_from(kind, fields) for kind, fields in data["events"])
        return CachedAnswer(events, data["stop_reason"])

    async def put(self, key: bytes, answer: CachedAnswer, ttl: float) -> None:
        from tokenrelay.streams import keys
        from tokenrelay.streams.redis import store_errors

        data = {
            "events": [[kind_of(e), event_fields(e)] for e in answer.events],
            "stop_reason": answer.stop_reason,
        }
        with store_errors():
            await self._redis.set(keys.cache_key(key), orjson.dumps(data), px=int(ttl * 1000))
