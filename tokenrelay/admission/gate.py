"""Concurrent upstream calls: a global cap, a per-principal cap, and beyond them a
bounded queue that is fair across principals.

A request enters the gate when its stream is created (`enter`, synchronous, so that
no two requests race for the last place): it runs at once, waits in the queue, or is
refused (`QueueFull`, a 503 before any stream exists). A waiting stream's producer
reports each new position as it changes (the client sees `queued` events), and gives
up after `queue_timeout`.

Fairness: each principal has a FIFO of its own, and a freed slot goes to the
principals in turn (round-robin), so one principal's hundred waiting requests do not
stand in front of another's one; and no principal may hold more than `per_principal
_queue` places, so one cannot fill the queue for everybody.

Two implementations of one `Gate`: `MemoryGate` counts one process's calls;
`RedisGate` (admission/redis_gate.py) holds the caps and the queue across every
instance on one Redis, with the same order and the same positions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tokenrelay.config import Settings
from tokenrelay.errors import Overloaded

Report = Callable[[int], Awaitable[None]]


class QueueFull(Overloaded):
    """At capacity, and no room to wait: 503 + Retry-After."""


class QueueTimeout(Overloaded):
    """Waited `queue_timeout` without a slot: the stream ends with a retryable error."""


@dataclass(frozen=True, slots=True)
class Caps:
    max_concurrent: int = 0  # 0 = no cap
    per_principal: int = 0  # 0 = no cap
    queue_size: int = 0  # 0 = nobody waits: beyond a cap is a 503
    queue_timeout: float = 30.0
    per_principal_queue: int = 0  # 0 = half the queue (at least 1)

    @property
    def capped(self) -> bool:
        return bool(self.max_concurrent or self.per_principal)

    @property
    def principal_share(self) -> int:
        return self.per_principal_queue or max(1, (self.queue_size + 1) // 2)

    @classmethod
    def of(cls, settings: Settings) -> Caps:
        return cls(
            max_concurrent=settings.max_concurrent,
            per_principal=settings.max_concurrent_per_principal,
            queue_size=settings.queue_size,
            queue_timeout=settings.queue_timeout,
            per_principal_queue=settings.queue_per_principal,
        )

    def full(self, waiting: int) -> QueueFull:
        if waiting:
            return QueueFull(
                f"At capacity, and this caller already has {waiting} requests waiting",
                retry_after=1,
            )
        return QueueFull("At capacity and the queue is full; retry shortly", retry_after=1)

    def timed_out(self) -> QueueTimeout:
        return QueueTimeout(
            f"Waited {self.queue_timeout:g} s in the queue without capacity", retry_after=1
        )


class Ticket(Protocol):
    """One request's place: running (`admitted`), or waiting at `position` (1 = next)."""

    principal: str
    admitted: bool
    position: int

    async def wait(self, report: Report) -> None:
        """Until admitted, calling `report(position)` whenever the position changes;
        QueueTimeout after the caps' `queue_timeout`. Cancelling leaves the queue."""
        ...

    def release(self) -> None:
        """Give up the slot, or the place in the queue (idempotent)."""
        ...


class Gate(Protocol):
    caps: Caps

    @property
    def queued(self) -> int:
        """Requests of this instance waiting now."""
        ...

    async def enter(self, principal: str) -> Ticket | None:
        """A ticket that runs now or waits; None when nothing is capped; QueueFull."""
        ...

    async def aclose(self) -> None: ...


async def wait_for_turn(ticket: Ticket, changed: asyncio.Event, caps: Caps, report: Report) -> None:
    """The waiting both gates share: report each new position until admitted."""
    reported = 0
    try:
        async with asyncio.timeout(caps.queue_timeout):
            while not ticket.admitted:
                if ticket.position != reported:
                    reported = ticket.position
                    await report(reported)
                    continue
                changed.clear()
                await changed.wait()
    except TimeoutError:
        ticket.release()
        raise caps.timed_out() from None
    except BaseException:
        ticket.release()
        raise


class MemoryTicket:
    __slots__ = ("_changed", "_gate", "admitted", "position", "principal", "released")

    def __init__(self, gate: MemoryGate, principal: str, admitted: bool) -> None:
        self._gate = gate
        self.principal = principal
        self.admitted = admitted
        self.released = False
        self.position = 0
        self._changed: asyncio.Event | None = None if admitted else asyncio.Event()

    def _moved(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def wait(self, report: Report) -> None:
        if not self.admitted:
            assert self._changed is not None
            await wait_for_turn(self, self._changed, self._gate.caps, report)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._gate._release(self)


class MemoryGate:
    """One process's gate. `enter` has no await: no two requests race for a place."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.running = 0
        self._running_by: dict[str, int] = {}
        self._queues: dict[str, deque[MemoryTicket]] = {}
        self._turns: deque[str] = deque()  # principals with waiting tickets, next first
        self.queued = 0

    async def enter(self, principal: str) -> MemoryTicket | None:
        caps = self.caps
        if not caps.capped:
            return None
        if not self.queued and self._has_room(principal):
            self._take(principal)
            return MemoryTicket(self, principal, admitted=True)
        waiting = self._queues.get(principal)
        if self.queued >= caps.queue_size:
            raise caps.full(0)
        if waiting is not None and len(waiting) >= caps.principal_share:
            raise caps.full(len(waiting))
        ticket = MemoryTicket(self, principal, admitted=False)
        if waiting is None:
            waiting = self._queues[principal] = deque()
            self._turns.append(principal)
        waiting.append(ticket)
        self.queued += 1
        self._admit_waiting()
        self._renumber()
        return ticket

    def _has_room(self, principal: str) -> bool:
        caps = self.caps
        if caps.max_concurrent and self.running >= caps.max_concurrent:
            return False
        return not (caps.per_principal and self._running_by.get(principal, 0) >= caps.per_principal)

    def _take(self, principal: str) -> None:
        self.running += 1
        self._running_by[principal] = self._running_by.get(principal, 0) + 1

    async def aclose(self) -> None:
        pass

    def _release(self, ticket: MemoryTicket) -> None:
        principal = ticket.principal
        if ticket.admitted:
            self.running -= 1
            left = self._running_by[principal] - 1
            if left:
                self._running_by[principal] = left
            else:
                del self._running_by[principal]
        else:
            waiting = self._queues[principal]
            waiting.remove(ticket)
            self.queued -= 1
            if not waiting:
                del self._queues[principal]
                self._turns.remove(principal)
        self._admit_waiting()
        self._renumber()

    def _admit_waiting(self) -> None:
        """Give every free slot to the next principal in turn that may use it."""
        while self._turns:
            for _ in range(len(self._turns)):
                principal = self._turns[0]
                self._turns.rotate(-1)
                if self._has_room(principal):
                    break
            else:
                return  # nobody waiting may run now
            waiting = self._queues[principal]
            ticket = waiting.popleft()
            self.queued -= 1
            if not waiting:
                del self._queues[principal]
                self._turns.remove(principal)
            self._take(principal)
            ticket.admitted = True
            ticket._moved()

    def _renumber(self) -> None:
        """Every waiting ticket's position in the order the queue will serve them,
        were slots to free one at a time: principals in turn, each in its FIFO."""
        queues = [iter(self._queues[p]) for p in self._turns]
        position = 0
        while queues:
            still = []
            for queue in queues:
                ticket = next(queue, None)
                if ticket is None:
                    continue
                position += 1
                if ticket.position != position:
                    ticket.position = position
                    ticket._moved()
                still.append(queue)
            queues = still
