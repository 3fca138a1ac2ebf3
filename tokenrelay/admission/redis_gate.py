"""The gate across every instance on one Redis: the caps count the cluster's upstream
calls, and the queue is one queue, in one order, whichever instance a request came to.

Every place (running or waiting) is a ticket id in Redis, held by a lease its instance
renews every second; a killed instance's places lapse within `LEASE_MS`, so a crash
never holds a slot for good. Each step (enter, release, renew) is one Lua script that
also frees lapsed places and hands free slots to the head of the queue, so the state is
never half-updated, and the clock is Redis's own (no skew between instances).

The order is the one `MemoryGate` serves, principals in turn, each in its FIFO, kept
as a score: a principal's next waiting ticket joins the round after its previous one
(and after the round being served), so one principal's hundred requests do not stand
in front of another's one. Positions are ranks in that order.

An instance learns that its waiting tickets moved from a pub/sub message sent by every
step that admitted someone, and from its renewal each second; one Lua call updates all
of them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tokenrelay.admission.gate import Caps, QueueTimeout, Report, wait_for_turn
from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.observability.log import log_event
from tokenrelay.streams import keys
from tokenrelay.streams.redis import store_errors

log = logging.getLogger("tokenrelay.gate")

LEASE_MS = 3000
RENEW_S = 1.0

# KEYS (all steps): seq, run, queue, alive, who, running_by, waiting_by, last_round,
# round. ARGV[1..3] (all steps): lease ms, global cap, per-principal cap.
_COMMON = """
local seq, run, queue, alive, who = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local running_by, waiting_by, last_round, round = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local lease, cap, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function decr(hash, p)
  if redis.call('HINCRBY', hash, p, -1) <= 0 then
    redis.call('HDEL', hash, p)
    if hash == waiting_by then redis.call('HDEL', last_round, p) end
  end
end

local function leave_running(id)
  local p = redis.call('HGET', who, id)
  if redis.call('ZREM', run, id) == 1 and p then decr(running_by, p) end
  redis.call('HDEL', who, id)
end

local function leave_queue(id)
  local p = redis.call('HGET', who, id)
  redis.call('ZREM', alive, id)
  if redis.call('ZREM', queue, id) == 1 and p then decr(waiting_by, p) end
  redis.call('HDEL', who, id)
end

local function purge()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', run, '-inf', now)) do leave_running(id) end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do leave_queue(id) end
end

local function full()
  return cap > 0 and redis.call('ZCARD', run) >= cap
end

local function has_room(p)
  if full() then return false end
  return per == 0 or tonumber(redis.call('HGET', running_by, p) or '0') < per
end

local function admit(id, p)
  redis.call('ZADD', run, now + lease, id)
  redis.call('HINCRBY', running_by, p, 1)
end

-- Every free slot to the first waiting ticket, in order, whose principal may use it.
local function promote()
  if full() then return end
  local admitted = 0
  local waiting = redis.call('ZRANGE', queue, 0, -1, 'WITHSCORES')
  for i = 1, #waiting, 2 do
    local id = waiting[i]
    local p = redis.call('HGET', who, id)
    if p and has_room(p) then
      redis.call('ZREM', queue, id)
      redis.call('ZREM', alive, id)
      decr(waiting_by, p)
      admit(id, p)
      if tonumber(redis.call('GET', round) or '0') < tonumber(waiting[i + 1]) then
        redis.call('SET', round, waiting[i + 1])
      end
      admitted = admitted + 1
      if full() then break end
    end
  end
  if admitted > 0 then redis.call('PUBLISH', KEYS[10], admitted) end
end

-- 0 running, n > 0 waiting at position n, -1 gone (its lease lapsed).
local function state(id)
  if redis.call('ZSCORE', run, id) then return 0 end
  local rank = redis.call('ZRANK', queue, id)
  if rank then return rank + 1 end
  return -1
end
"""

# ARGV[4..7]: principal, queue size, per-principal queue share. Returns {id, state} or
# {"", -1} (the queue is full) or {"", -2, n} (the principal already has n waiting).
ENTER = (
    _COMMON
    + """
local p, size, share = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
purge()
promote()
local id = string.format('%015d', redis.call('INCR', seq))
if redis.call('ZCARD', queue) == 0 and has_room(p) then
  redis.call('HSET', who, id, p)
  admit(id, p)
  return {id, 0}
end
if redis.call('ZCARD', queue) >= size then return {'', -1} end
local mine = tonumber(redis.call('HGET', waiting_by, p) or '0')
if mine >= share then return {'', -2, mine} end
local r = math.max(tonumber(redis.call('GET', round) or '0'),
                   tonumber(redis.call('HGET', last_round, p) or '0')) + 1
redis.call('HSET', who, id, p)
redis.call('ZADD', queue, r, id)
redis.call('ZADD', alive, now + lease, id)
redis.call('HINCRBY', waiting_by, p, 1)
redis.call('HSET', last_round, p, r)
promote()
local now_at = state(id)
-- Placed before others (a principal's first request passes another's many): they moved.
if now_at > 0 and now_at < redis.call('ZCARD', queue) then redis.call('PUBLISH', KEYS[10], 0) end
return {id, now_at}
"""
)

# ARGV[4..]: this instance's ticket ids. Renews their leases, then returns each one's
# state, in order.
RENEW = (
    _COMMON
    + """
for i = 4, #ARGV do
  redis.call('ZADD', run, 'XX', now + lease, ARGV[i])
  redis.call('ZADD', alive, 'XX', now + lease, ARGV[i])
end
purge()
promote()
local states = {}
for i = 4, #ARGV do states[#states + 1] = state(ARGV[i]) end
return states
"""
)

# ARGV[4..]: ticket ids to give up, running or waiting.
RELEASE = (
    _COMMON
    + """
for i = 4, #ARGV do
  leave_running(ARGV[i])
  leave_queue(ARGV[i])
end
purge()
promote()
return 0
"""
)

_KEYS = [
    f"{keys.PREFIX}:gate:{name}"
    for name in (
        "seq", "run", "queue", "alive", "who",
        "running_by", "waiting_by", "last_round", "round", "changed",
    )
]  # fmt: skip
CHANGED_CHANNEL = _KEYS[-1]


class RedisTicket:
    __slots__ = ("_changed", "_gate", "admitted", "id", "lost", "position", "principal")

    def __init__(self, gate: RedisGate, ticket_id: str, principal: str, state: int) -> None:
        self._gate = gate
        self.id = ticket_id
        self.principal = principal
        self.admitted = state == 0
        self.position = max(state, 0)
        self.lost = False
        self._changed = asyncio.Event()

    def _update(self, state: int) -> None:
        if state == 0:
            moved = not self.admitted
            self.admitted = True
        elif state < 0:
            moved = not self.admitted and not self.lost
            self.lost = True
            self.position = -1  # a position to report, which `wait` turns into an error
        else:
            moved = state != self.position
            self.position = state
        if moved:
            self._changed.set()

    async def wait(self, report: Report) -> None:
        if self.admitted:
            return
        await wait_for_turn(self, self._changed, self._gate.caps, self._report_unless_lost(report))

    def _report_unless_lost(self, report: Report) -> Report:
        async def checked(position: int) -> None:
            if self.lost:  # Redis forgot the place (an outage longer than its lease)
                raise QueueTimeout("The queue lost this request's place; retry", retry_after=1)
            await report(position)

        return checked

    def release(self) -> None:
        self._gate._release(self)


class RedisGate:
    def __init__(
        self,
        client: aioredis.Redis,
        subscriber: aioredis.Redis,
        caps: Caps,
        *,
        lease_ms: int = LEASE_MS,
        renew_every: float = RENEW_S,
    ) -> None:
        self.caps = caps
        self._subscriber = subscriber
        self._enter = client.register_script(ENTER)
        self._renew = client.register_script(RENEW)
        self._release_script = client.register_script(RELEASE)
        self._lease_ms = lease_ms
        self._renew_every = renew_every
        self._tickets: dict[str, RedisTicket] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def queued(self) -> int:
        return sum(1 for ticket in self._tickets.values() if not ticket.admitted)

    def _args(self, *rest: Any) -> list[Any]:
        caps = self.caps
        return [self._lease_ms, caps.max_concurrent, caps.per_principal, *rest]

    async def enter(self, principal: str) -> RedisTicket | None:
        caps = self.caps
        if not caps.capped:
            return None
        args = self._args(principal, caps.queue_size, caps.principal_share)
        with store_errors():
            reply = cast(list[Any], await self._enter(keys=_KEYS, args=args))
        ticket_id, state = reply[0].decode(), int(reply[1])
        if not ticket_id:
            raise caps.full(int(reply[2]) if state == -2 else 0)
        ticket = RedisTicket(self, ticket_id, principal, state)
        self._tickets[ticket_id] = ticket
        self._watch()
        return ticket

    def _release(self, ticket: RedisTicket) -> None:
        if self._tickets.pop(ticket.id, None) is None:
            return
        task = asyncio.create_task(self._give_back(ticket.id), name="gate-release")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _give_back(self, ticket_id: str) -> None:
        try:
            await self._release_script(keys=_KEYS, args=self._args(ticket_id))
        except (RedisError, OSError) as exc:  # the lease lapses instead, within LEASE_MS
            log_event(log, "gate_release_failed", level=logging.WARNING, error=exc)

    def _watch(self) -> None:
        """Renewals and the subscription, from this instance's first place on."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._run_watcher(), name="gate-watcher")

    async def _run_watcher(self) -> None:
        listener = asyncio.create_task(self._listen(), name="gate-changes")
        try:
            while True:
                await self._refresh()
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._renew_every):
                        await self._changed.wait()
        finally:
            await cancel_and_wait(listener)

    async def _refresh(self) -> None:
        tickets = list(self._tickets.values())
        if not tickets:
            return
        try:
            states = await self._renew(keys=_KEYS, args=self._args(*(t.id for t in tickets)))
        except (RedisError, OSError) as exc:
            log_event(log, "gate_renew_failed", level=logging.WARNING, error=exc)
            return
        for ticket, state in zip(tickets, cast(list[int], states), strict=True):
            ticket._update(int(state))

    async def _listen(self) -> None:
        """A step elsewhere admitted someone: our waiting tickets may have moved."""
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(CHANGED_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self.queued:
                            self._changed.set()
            except (RedisError, OSError) as exc:
                log_event(log, "gate_subscription_lost", level=logging.WARNING, error=exc)
                await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        for ticket in list(self._tickets.values()):
            ticket.release()
        await cancel_and_wait(self._watcher)
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=2)
