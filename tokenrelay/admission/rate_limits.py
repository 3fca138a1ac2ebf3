"""Requests and tokens per minute, per principal, the same on every instance.

Windows are fixed calendar minutes (`reset` is the next minute boundary), counted in
the stream store: in this process's memory, or in Redis, where one counter per
principal and window is shared by every instance (the limit is the limit, never
limit × replicas). A request is admitted only if both counters have room, and then
both count it, atomically: one Lua script in Redis, one synchronous step in memory.

Tokens are reserved at admission (the prompt's estimate plus `max_tokens`) and
reconciled when the stream ends: what it did not use is given back to the window it
was taken from (if that window is over, there is nothing to give back to).

Why not the `limits` package: it counts hits, but cannot give back part of a hit,
which the token reservation needs; and a check-then-hit of two limits in it is two
round trips and not atomic across instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from tokenrelay.errors import RateLimited
from tokenrelay.observability import telemetry
from tokenrelay.providers.base import GenerationRequest

if TYPE_CHECKING:
    import redis.asyncio as aioredis

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Limit:
    """Per minute; 0 = unlimited."""

    requests: int = 0
    tokens: int = 0

    @property
    def unlimited(self) -> bool:
        return not self.requests and not self.tokens


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    remaining: int  # after the current request
    reset_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request was admitted under: its headers' figures, and its reservation."""

    requests: Quota | None
    tokens: Quota | None
    principal: str = ""
    window: int = 0
    reserved: int = 0

    def headers(self, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        out: dict[str, str] = {}
        for name, quota in (("requests", self.requests), ("tokens", self.tokens)):
            if quota is not None:
                out[f"x-ratelimit-limit-{name}"] = str(quota.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(quota.remaining)
                out[f"x-ratelimit-reset-{name}"] = f"{max(0, round(quota.reset_at - now))}s"
        return out


UNLIMITED = Admission(None, None)


class RateLimitExceeded(RateLimited):
    """A 429 that says, in its headers, which window is full and when it resets."""

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = headers


def estimate_tokens(request: GenerationRequest) -> int:
    """What a request may use at most: its prompt (about 4 characters a token) and
    its `max_tokens`. Reserved at admission, settled at the end."""
    chars = len(request.system) if isinstance(request.system, str) else 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(block.get("text", ""))) for block in content)
    return chars // 4 + 1 + request.max_tokens


class Counters(Protocol):
    async def take(
        self, principal: str, window: int, requests: tuple[int, int], tokens: tuple[int, int]
    ) -> tuple[bool, int, int]:
        """Add `requests[0]` and `tokens[0]` to the principal's counters of `window`
        if neither passes its limit (`[1]`, 0 = no limit); returns (taken, requests
        used, tokens used) as they stand afterwards."""
        ...

    async def give_back(self, principal: str, window: int, tokens: int) -> None:
        """Return unused tokens to a window (nothing if it is already over)."""
        ...


class RateLimits:
    def __init__(
        self,
        counters: Counters,
        default: Limit,
        overrides: dict[str, Limit] | None = None,
        *,
        extra_overrides: Callable[[str], Limit | None] | None = None,
    ) -> None:
        self._counters = counters
        self._default = default
        self._overrides = overrides or {}
        # Asked first, per request: limits that may change while the gateway runs (an
        # API key's own, from a keys file that is re-read), so they cannot be a dict.
        self._extra_overrides = extra_overrides

    def limit_for(self, principal: str) -> Limit:
        if self._extra_overrides is not None:
            extra = self._extra_overrides(principal)
            if extra is not None:
                return extra
        return self._overrides.get(principal, self._default)

    async def admit(self, principal: str, tokens: int) -> Admission:
        """Count a request that may use up to `tokens`; RateLimited (429) if either
        limit has no room for it."""
        limit = self.limit_for(principal)
        if limit.unlimited:
            return UNLIMITED
        now = time.time()
        window = int(now // WINDOW_S)
        reset_at = (window + 1) * WINDOW_S
        reserve = tokens if limit.tokens else 0
        taken, used_requests, used_tokens = await self._counters.take(
            principal, window, (1, limit.requests), (reserve, limit.tokens)
        )
        if not taken:
            retry_after = max(1.0, reset_at - now)
            refused = Admission(
                Quota(limit.requests, max(0, limit.requests - used_requests), reset_at)
                if limit.requests
                else None,
                Quota(limit.tokens, max(0, limit.tokens - used_tokens), reset_at)
                if limit.tokens
                else None,
            )
            if limit.requests and used_requests + 1 > limit.requests:
                message = f"Rate limit exceeded: {limit.requests} requests per minute"
                telemetry.rate_limited("requests", principal, limit.requests)
            else:
                message = (
                    f"Rate limit exceeded: {limit.tokens} tokens per minute (this request "
                    f"reserves {reserve}: its prompt and max_tokens)"
                )
                telemetry.rate_limited("tokens", principal, limit.tokens)
            raise RateLimitExceeded(message, retry_after=retry_after, headers=refused.headers(now))
        return Admission(
            requests=Quota(limit.requests, limit.requests - used_requests, reset_at)
            if limit.requests
            else None,
            tokens=Quota(limit.tokens, limit.tokens - used_tokens, reset_at)
            if limit.tokens
            else None,
            principal=principal,
            window=window,
            reserved=reserve,
        )

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """The stream ended having used `used_tokens`: give back the rest."""
        unused = admission.reserved - used_tokens
        if unused > 0:
            await self._counters.give_back(admission.principal, admission.window, unused)


class MemoryCounters:
    """One process: counters of the current and the previous window only."""

    def __init__(self) -> None:
        self._window = 0
        self._used: dict[str, list[int]] = {}

    def _current(self, window: int) -> dict[str, list[int]]:
        if window != self._window:
            self._window, self._used = window, {}
        return self._used

    async def take(
        self, principal: str, window: int, requests: tuple[int, int], tokens: tuple[int, int]
    ) -> tuple[bool, int, int]:
        used = self._current(window).setdefault(principal, [0, 0])
        over_requests = requests[1] and used[0] + requests[0] > requests[1]
        over_tokens = tokens[1] and used[1] + tokens[0] > tokens[1]
        if over_requests or over_tokens:
            return False, used[0], used[1]
        used[0] += requests[0]
        used[1] += tokens[0]
        return True, used[0], used[1]

    async def give_back(self, principal: str, window: int, tokens: int) -> None:
        if window == self._window and principal in self._used:
            used = self._used[principal]
            used[1] = max(0, used[1] - tokens)


# KEYS: requests counter, tokens counter. ARGV: requests, request limit, tokens, token
# limit, ttl. Both or neither, in one step, whatever the number of instances.
TAKE = """
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
local lr, lt = tonumber(ARGV[2]), tonumber(ARGV[4])
if (lr > 0 and r + tonumber(ARGV[1]) > lr) or (lt > 0 and t + tonumber(ARGV[3]) > lt) then
  return {0, r, t}
end
r = redis.call('INCRBY', KEYS[1], ARGV[1])
t = redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {1, r, t}
"""
# Give back only to a window that still exists, never below zero.
GIVE_BACK = """
local t = redis.call('GET', KEYS[1])
if not t then return 0 end
local left = math.max(0, tonumber(t) - tonumber(ARGV[1]))
redis.call('SET', KEYS[1], left, 'KEEPTTL')
return left
"""


class RedisCounters:
    def __init__(self, client: aioredis.Redis) -> None:
        from tokenrelay.streams import keys

        self._keys = keys
        self._take = client.register_script(TAKE)
        self._give_back = client.register_script(GIVE_BACK)

    async def take(
        self, principal: str, window: int, requests: tuple[int, int], tokens: tuple[int, int]
    ) -> tuple[bool, int, int]:
        from tokenrelay.streams.redis import store_errors

        names = [
            self._keys.rate_key(principal, "requests", window),
            self._keys.rate_key(principal, "tokens", window),
        ]
        args: list[Any] = [requests[0], requests[1], tokens[0], tokens[1], 2 * WINDOW_S]
        with store_errors():
            taken, used_requests, used_tokens = cast(
                list[int], await self._take(keys=names, args=args)
            )
        return bool(taken), int(used_requests), int(used_tokens)

    async def give_back(self, principal: str, window: int, tokens: int) -> None:
        from tokenrelay.streams.redis import store_errors

        name = self._keys.rate_key(principal, "tokens", window)
        with store_errors():
            await self._give_back(keys=[name], args=[tokens])
