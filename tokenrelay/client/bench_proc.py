"""What a process and every process under it cost, read from /proc.

CPU: user and system time of the process, of every live descendant, and of the
children it has already reaped (`cutime`, `cstime`), so that a gateway with worker
processes is measured whole. A live process's time is read from its CPU-time clock
(nanoseconds, all its threads, those already ended included) rather than from
/proc/PID/stat's clock ticks, whose 10 ms would be a tenth of a short phase.
The main thread's time apart (`main_thread_seconds`): the gateway's event loop runs
there, and a request's cost on it is what limits one process; the server's own
threads (granian's) run beside it, on another core when there is one.
Memory: RSS, and PSS (`smaps_rollup`) where the kernel has it, which shares pages
shared between processes fairly among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        # After the command's name, which may hold spaces and parentheses.
        return f.read().rpartition(")")[2].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int(_stat_fields(int(name))[1])
                parents.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def _process_clock(pid: int) -> int:
    # What glibc's clock_getcpuclockid(pid) returns: the process's CPUCLOCK_SCHED clock.
    return (~pid << 3) | 2


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid`'s whole tree, the reaped children's included."""
    seconds = 0.0
    for i, member in enumerate(descendants(pid)):
        with contextlib.suppress(OSError):
            fields = _stat_fields(member)
            if i == 0:
                seconds += (int(fields[13]) + int(fields[14])) / _TICK
            try:
                seconds += time.clock_gettime(_process_clock(member))
            except OSError:  # gone meanwhile, or a kernel without the clock
                seconds += (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def main_thread_seconds(pid: int) -> float:
    """CPU time of `pid`'s main thread: its run time in nanoseconds from schedstat, or
    its clock ticks where the kernel keeps no schedstat."""
    # The leader's own schedstat, not the group's.
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def _kib(path: str, key: str) -> int | None:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return None


@dataclass(slots=True)
class Memory:
    rss_kib: int
    pss_kib: int | None  # None where smaps_rollup cannot be read


def memory(members: list[int]) -> Memory:
    """The summed memory of these processes (a tree, from `descendants`)."""
    rss = 0
    pss: int | None = 0
    for member in members:
        rss += _kib(f"/proc/{member}/status", "VmRSS:") or 0
        if pss is not None:
            one = _kib(f"/proc/{member}/smaps_rollup", "Pss:")
            pss = None if one is None else pss + one
    return Memory(rss, pss)


@dataclass(slots=True)
class TreeProbe:
    """CPU over a phase, and the peak memory while it ran (sampled), of the trees of
    `pids` together (one gateway, or several instances behind a load balancer)."""

    pids: tuple[int, ...]
    interval: float = 0.1
    idle: Memory = field(default_factory=lambda: Memory(0, None))
    peak: Memory = field(default_factory=lambda: Memory(0, None))
    loop_cpu: float = 0.0  # the main threads' CPU seconds over the phase, once stopped
    _cpu0: float = 0.0
    _loop0: float = 0.0
    _task: asyncio.Task[None] | None = None
    # The tree as it was at the start: listing it is the costly part of a sample.
    _members: list[int] = field(default_factory=list)

    async def _sample(self) -> None:
        while True:
            now = memory(self._members)
            self.peak.rss_kib = max(self.peak.rss_kib, now.rss_kib)
            if now.pss_kib is not None:
                self.peak.pss_kib = max(self.peak.pss_kib or 0, now.pss_kib)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._members = [member for pid in self.pids for member in descendants(pid)]
        self.idle = memory(self._members)
        self.peak = Memory(self.idle.rss_kib, self.idle.pss_kib)
        self._cpu0 = self._cpu()
        self._loop0 = self._loop_cpu()
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> float:
        """CPU seconds since `start` (and the main threads' in `loop_cpu`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.loop_cpu = self._loop_cpu() - self._loop0
        return self._cpu() - self._cpu0

    def _cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _loop_cpu(self) -> float:
        return sum(main_thread_seconds(pid) for pid in self.pids)
