"""Short-lived stream tickets, for `EventSource`, which cannot send headers.

`POST /api/tickets` (authenticated) issues a ticket; `GET /api/stream-response?ticket=`
starts one stream with it. A ticket starts exactly one stream; after that it only
lets the browser's automatic reconnect (with `Last-Event-ID`) resume *that* stream.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Protocol, cast

from tokenrelay.auth.base import Principal
from tokenrelay.errors import AuthenticationFailed
from tokenrelay.streams import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

INVALID = "Invalid or expired ticket"


class TicketStore(Protocol):
    async def issue(self, principal: Principal, ttl: float) -> str: ...

    async def redeem(self, ticket: str) -> Principal:
        """The ticket's principal; it can start no other stream afterwards."""
        ...

    async def bind(self, ticket: str, principal: Principal, stream_id: str, ttl: float) -> None:
        """Remember the stream the ticket started, for reconnects."""
        ...

    async def resume(self, ticket: str, stream_id: str) -> Principal:
        """The principal, if the ticket started `stream_id`."""
        ...


def new_ticket() -> str:
    return "tkt_" + secrets.token_urlsafe(24)


class MemoryTickets:
    def __init__(self) -> None:
        self._fresh: dict[str, tuple[str, float]] = {}
        self._bound: dict[str, tuple[str, str, float]] = {}

    def _sweep(self, now: float) -> None:
        if len(self._fresh) + len(self._bound) > 10_000:
            self._fresh = {k: v for k, v in self._fresh.items() if v[1] > now}
            self._bound = {k: v for k, v in self._bound.items() if v[2] > now}

    async def issue(self, principal: Principal, ttl: float) -> str:
        now = time.monotonic()
        self._sweep(now)
        ticket = new_ticket()
        self._fresh[ticket] = (principal.id, now + ttl)
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        entry = self._fresh.pop(ticket, None)
        if entry is None or entry[1] < time.monotonic():
            raise AuthenticationFailed(INVALID)
        return Principal(entry[0])

    async def bind(self, ticket: str, principal: Principal, stream_id: str, ttl: float) -> None:
        self._bound[ticket] = (principal.id, stream_id, time.monotonic() + ttl)

    async def resume(self, ticket: str, stream_id: str) -> Principal:
        entry = self._bound.get(ticket)
        if entry is None or entry[1] != stream_id or entry[2] < time.monotonic():
            raise AuthenticationFailed(INVALID)
        return Principal(entry[0])


class RedisTickets:
    """Tickets every instance honours, on the stream store's own connection pool.

    Redis being unreachable is `StoreUnavailable` (503 + Retry-After), as for streams.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        # Imported here, not atop the module: only a Redis store loads redis-py.
        from tokenrelay.streams.redis import store_errors

        self._redis = client
        self._store_errors = store_errors

    async def issue(self, principal: Principal, ttl: float) -> str:
        ticket = new_ticket()
        with self._store_errors():
            await self._redis.set(keys.ticket_key(ticket), principal.id, ex=max(1, int(ttl)))
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        with self._store_errors():
            owner = cast(bytes | None, await self._redis.getdel(keys.ticket_key(ticket)))
        if owner is None:
            raise AuthenticationFailed(INVALID)
        return Principal(owner.decode())

    async def bind(self, ticket: str, principal: Principal, stream_id: str, ttl: float) -> None:
        value = f"{principal.id} {stream_id}"
        with self._store_errors():
            await self._redis.set(keys.ticket_stream_key(ticket), value, ex=max(1, int(ttl)))

    async def resume(self, ticket: str, stream_id: str) -> Principal:
        with self._store_errors():
            value = cast(bytes | None, await self._redis.get(keys.ticket_stream_key(ticket)))
        owner, _, bound = (value or b"").decode().rpartition(" ")
        if not owner or bound != stream_id:
            raise AuthenticationFailed(INVALID)
        return Principal(owner)
