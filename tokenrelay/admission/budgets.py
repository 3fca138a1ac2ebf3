"""Spending budgets per principal, per UTC day and per UTC month, enforced while a
stream runs, the same on every instance.

Spend is counted in micro-dollars in the store (this process's memory, or Redis,
shared by every instance). A stream does not write its cost there token by token:
it takes *grants*, slices of the remaining budget, and spends them locally; only when
a grant is used up does it ask for the next. A grant is never more than what is left
of either budget, so when the budget runs out the last grant is a partial one and the
stream is cut at the first token that would cross it (a terminal `budget_exceeded`
error; the upstream call is cancelled). When the stream ends, what it was granted and
did not spend is given back, and what it spent beyond (a token count the upstream
reported above the deltas seen) is added.

A request is refused before it starts (429) when the principal's spend, which
includes every grant its running streams hold, has reached a budget.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from tokenrelay.errors import RateLimited
from tokenrelay.observability import telemetry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

MICRO = 1_000_000
# How much of the budget a stream takes at a time, in micro-dollars ($0.01): a grant
# per hundred-odd tokens of a mid-priced model, so the store is asked rarely.
GRANT_MICRO = 10_000


@dataclass(frozen=True, slots=True)
class Budget:
    """USD per UTC day and per UTC month; 0 = none."""

    daily: float = 0.0
    monthly: float = 0.0

    @property
    def unlimited(self) -> bool:
        return not self.daily and not self.monthly


def dollars(amount: float) -> str:
    """A budget as people write it: 5, 0.25, 0.000056 (never 5.6e-05)."""
    return f"{amount:.6f}".rstrip("0").rstrip(".") or "0"


class BudgetExceeded(RateLimited):
    """A budget is spent: 429 before a stream starts, `budget_exceeded` during one."""

    @property
    def code(self) -> str:
        return "budget_exceeded"


def periods(now: float) -> tuple[str, str, float, float]:
    """The day and month the moment falls in, and when each ends (epoch seconds)."""
    t = time.gmtime(now)
    day = time.strftime("%Y%m%d", t)
    month = time.strftime("%Y%m", t)
    day_end = (int(now) // 86400 + 1) * 86400
    year, mon = t.tm_year + (t.tm_mon == 12), t.tm_mon % 12 + 1
    month_end = calendar.timegm((year, mon, 1, 0, 0, 0, 0, 0, 0))
    return day, month, float(day_end), float(month_end)


class SpendCounters(Protocol):
    async def grant(
        self, principal: str, periods: tuple[str, str], limits: tuple[int, int], want: int
    ) -> tuple[int, int, int]:
        """Add up to `want` micro-dollars to the principal's day and month counters
        without passing either limit (0 = none); returns (granted, day spend, month
        spend) as they stand afterwards. `want` = 0 only reads."""
        ...

    async def adjust(self, principal: str, periods: tuple[str, str], delta: int) -> None:
        """Add `delta` (negative: give back) to both counters, never below zero."""
        ...


class Budgets:
    def __init__(
        self,
        counters: SpendCounters,
        default: Budget,
        overrides: dict[str, Budget] | None = None,
        *,
        extra_overrides: Callable[[str], Budget | None] | None = None,
    ) -> None:
        self._counters = counters
        self._default = default
        self._overrides = overrides or {}
        # Asked first: budgets that may change while the gateway runs (an API key's own).
        self._extra_overrides = extra_overrides

    def budget_for(self, principal: str) -> Budget:
        if self._extra_overrides is not None:
            own = self._extra_overrides(principal)
            if own is not None:
                return own
        return self._overrides.get(principal, self._default)

    async def check(self, principal: str) -> Meter | None:
        """A meter for a new stream of `principal`; BudgetExceeded if a budget is
        already spent; None when the principal has no budget."""
        budget = self.budget_for(principal)
        if budget.unlimited:
            return None
        now = time.time()
        day, month, day_end, month_end = periods(now)
        limits = (round(budget.daily * MICRO), round(budget.monthly * MICRO))
        _, day_spend, month_spend = await self._counters.grant(principal, (day, month), limits, 0)
        if limits[0] and day_spend >= limits[0]:
            telemetry.budget_exceeded("daily", "admission", principal)
            raise BudgetExceeded(
                f"Budget exceeded: the daily budget of ${dollars(budget.daily)} is spent",
                retry_after=day_end - now,
            )
        if limits[1] and month_spend >= limits[1]:
            telemetry.budget_exceeded("monthly", "admission", principal)
            raise BudgetExceeded(
                f"Budget exceeded: the monthly budget of ${dollars(budget.monthly)} is spent",
                retry_after=month_end - now,
            )
        return Meter(self._counters, principal, (day, month), limits, budget)


class Meter:
    """One stream's spending: local, against the grants it holds.

    `charge` is the per-token call: a comparison, no I/O. Only when it says the grants
    are used up does the producer `await refill()`."""

    __slots__ = ("_budget", "_counters", "_limits", "_periods", "_principal", "granted", "spent")

    def __init__(
        self,
        counters: SpendCounters,
        principal: str,
        periods: tuple[str, str],
        limits: tuple[int, int],
        budget: Budget,
    ) -> None:
        self._counters = counters
        self._principal = principal
        self._periods = periods
        self._limits = limits
        self._budget = budget
        self.granted = 0  # micro-dollars taken from the store
        self.spent = 0.0  # micro-dollars this stream has used

    def charge(self, micro: float) -> bool:
        """Spend `micro`; False when that goes beyond the grants held."""
        self.spent += micro
        return self.spent <= self.granted

    async def refill(self) -> bool:
        """Take grants until what was spent is covered; False when a budget cannot
        cover it (the stream must stop)."""
        while self.spent > self.granted:
            want = max(GRANT_MICRO, int(self.spent - self.granted) + 1)
            got, _, _ = await self._counters.grant(
                self._principal, self._periods, self._limits, want
            )
            if got <= 0:
                return False
            self.granted += got
        return True

    @property
    def scope(self) -> str:
        """The budget a stream is cut by: the daily one, if there is one."""
        return "daily" if self._budget.daily else "monthly"

    def exceeded(self) -> BudgetExceeded:
        budget = self._budget
        amount = budget.daily or budget.monthly
        message = f"Budget exceeded: the {self.scope} budget of ${dollars(amount)} is spent"
        return BudgetExceeded(message)

    async def settle(self, cost_usd: float) -> None:
        """The stream ended having cost `cost_usd` (as billed): square the counters."""
        delta = round(cost_usd * MICRO) - self.granted
        if delta:
            await self._counters.adjust(self._principal, self._periods, delta)
        self.granted += delta


class MemorySpend:
    def __init__(self) -> None:
        self._spend: dict[tuple[str, str], int] = {}

    async def grant(
        self, principal: str, periods: tuple[str, str], limits: tuple[int, int], want: int
    ) -> tuple[int, int, int]:
        day_key, month_key = (principal, "d" + periods[0]), (principal, "m" + periods[1])
        day, month = self._spend.get(day_key, 0), self._spend.get(month_key, 0)
        grant = want
        if limits[0]:
            grant = min(grant, limits[0] - day)
        if limits[1]:
            grant = min(grant, limits[1] - month)
        grant = max(0, grant)
        self._spend[day_key], self._spend[month_key] = day + grant, month + grant
        return grant, day + grant, month + grant

    async def adjust(self, principal: str, periods: tuple[str, str], delta: int) -> None:
        for key in ((principal, "d" + periods[0]), (principal, "m" + periods[1])):
            self._spend[key] = max(0, self._spend.get(key, 0) + delta)


# KEYS: day counter, month counter. ARGV: day limit, month limit, want, ttl day, ttl month.
GRANT = """
local d = tonumber(redis.call('GET', KEYS[1]) or '0')
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
local g = tonumber(ARGV[3])
local ld, lm = tonumber(ARGV[1]), tonumber(ARGV[2])
if ld > 0 then g = math.min(g, ld - d) end
if lm > 0 then g = math.min(g, lm - m) end
if g < 0 then g = 0 end
if g > 0 then
  d = redis.call('INCRBY', KEYS[1], g)
  m = redis.call('INCRBY', KEYS[2], g)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return {g, d, m}
"""
ADJUST = """
for i = 1, 2 do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0') + tonumber(ARGV[1])
  if v < 0 then v = 0 end
  redis.call('SET', KEYS[i], v, 'KEEPTTL')
end
return 1
"""


class RedisSpend:
    """Counters every instance shares; a day's lives two days, a month's 62."""

    def __init__(self, client: aioredis.Redis) -> None:
        from tokenrelay.streams import keys

        self._keys = keys
        self._grant = client.register_script(GRANT)
        self._adjust = client.register_script(ADJUST)

    def _names(self, principal: str, periods: tuple[str, str]) -> list[str]:
        return [
            self._keys.spend_key(principal, "day", periods[0]),
            self._keys.spend_key(principal, "month", periods[1]),
        ]

    async def grant(
        self, principal: str, periods: tuple[str, str], limits: tuple[int, int], want: int
    ) -> tuple[int, int, int]:
        from tokenrelay.streams.redis import store_errors

        args: list[Any] = [limits[0], limits[1], want, 2 * 86400, 62 * 86400]
        with store_errors():
            got, day, month = cast(
                list[int], await self._grant(keys=self._names(principal, periods), args=args)
            )
        return int(got), int(day), int(month)

    async def adjust(self, principal: str, periods: tuple[str, str], delta: int) -> None:
        from tokenrelay.streams.redis import store_errors

        with store_errors():
            await self._adjust(keys=self._names(principal, periods), args=[delta])
