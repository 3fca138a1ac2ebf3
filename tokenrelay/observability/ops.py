"""The operations page's figures: what the metrics say about the last minutes, what
this instance is producing now, and what today cost.

`read_sample` reads the counters and histograms the page shows from the registry
(observability/metrics.py, bumped by the core; only read here) into one flat mapping
of cumulative values. `History` keeps those samples for `span` seconds, and every
figure over an interval is the difference of two samples: counts, per-minute rates,
and quantiles of the histogram buckets' increase, interpolated as Prometheus'
`histogram_quantile` does.

`OpsMonitor` owns the sampling. A sample costs some 0.3 ms of CPU with three models
in use, more with more (the histograms' `collect()`, mostly), and a snapshot's figures
as much again; so it samples every `idle_every` seconds while nobody watches
and every `every` second while an operations page is open; for those pages it builds
one snapshot per tick, shared by all of them: the figures, the streams in flight and
today's costs from the usage ledger (queried every `cost_every` seconds, not per tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from tokenrelay.errors import LedgerUnavailable, Overloaded
from tokenrelay.observability.log import log_event
from tokenrelay.observability.metrics import REGISTRY
from tokenrelay.streams.manager import InFlight, StreamManager
from tokenrelay.usage.report import UsageFilter, UsageGroup

log = logging.getLogger("tokenrelay.ops")

# Sample name -> the key it is summed into (over every other label). A key ending in
# ":" takes one label's value after it: the status of a stream's end, a bucket's bound.
KEYS = {
    "tokenrelay_streams_started_total": "started",
    "tokenrelay_streams_completed_total": "completed:",
    "tokenrelay_upstream_errors_total": "upstream_errors",
    "tokenrelay_upstream_retries_total": "retries",
    "tokenrelay_continuations_total": "continuations",
    "tokenrelay_time_to_first_token_seconds_bucket": "ttft:le:",
    "tokenrelay_time_to_first_token_seconds_count": "ttft:count",
    "tokenrelay_time_to_first_token_seconds_sum": "ttft:sum",
    "tokenrelay_output_tokens_per_second_count": "tps:count",
    "tokenrelay_output_tokens_per_second_sum": "tps:sum",
}
LABEL_OF = {"completed:": "status", "ttft:le:": "le"}

# How a stream may end without anything having gone wrong.
NOT_ERRORS = frozenset({"done", "cancelled", "abandoned"})

MAX_ROWS = 100  # streams in flight a snapshot lists (it counts them all)


class Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def read_sample(registry: Collects) -> dict[str, float]:
    """The registry's values for the page, summed into `KEYS`."""
    values: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            key = KEYS.get(sample.name)
            if key is None:
                continue
            label = LABEL_OF.get(key)
            if label is not None:
                key += sample.labels[label]
            values[key] = values.get(key, 0.0) + sample.value
    return values


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    values: Mapping[str, float]


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The `q`-quantile of a histogram's cumulative `(upper bound, count)` buckets, the
    last one +Inf, interpolated linearly within its bucket as Prometheus'
    `histogram_quantile` does; None without observations."""
    if len(buckets) < 2 or not buckets[-1][1]:
        return None
    rank = q * buckets[-1][1]
    b = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if b == len(buckets) - 1:  # in the +Inf bucket: the highest finite bound
        return buckets[-2][0]
    end, count = buckets[b]
    if b == 0:
        if end <= 0:
            return end
        start = 0.0
    else:
        start, below = buckets[b - 1]
        count -= below
        rank -= below
    return start + (end - start) * (rank / count)


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened between two samples."""

    start: Sample
    end: Sample

    def count(self, key: str) -> float:
        return self.end.values.get(key, 0.0) - self.start.values.get(key, 0.0)

    def ended(self) -> dict[str, int]:
        """Streams ended, by status (those that did)."""
        counts = {
            key.removeprefix("completed:"): round(self.count(key))
            for key in self.end.values
            if key.startswith("completed:")
        }
        return {status: n for status, n in sorted(counts.items()) if n}

    def errors(self) -> int:
        return sum(n for status, n in self.ended().items() if status not in NOT_ERRORS)

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        prefix = f"{histogram}:le:"
        return sorted(
            (float(key.removeprefix(prefix)), self.count(key))
            for key in self.end.values
            if key.startswith(prefix)
        )

    def quantile(self, q: float, histogram: str) -> float | None:
        return quantile(q, self.buckets(histogram))

    def mean(self, histogram: str) -> float | None:
        count = self.count(f"{histogram}:count")
        return self.count(f"{histogram}:sum") / count if count else None


class History:
    """Samples of the last `span` seconds, and one before them: the base of the first
    interval."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        samples = self._samples
        samples.append(sample)
        horizon = sample.at - self.span
        while len(samples) > 1 and samples[1].at <= horizon:
            samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def at(self, moment: float) -> Sample | None:
        """The last sample taken at or before `moment`."""
        i = bisect_right(self._samples, moment, key=lambda s: s.at)
        return self._samples[i - 1] if i else None

    def intervals(self, step: float) -> tuple[Interval, list[Interval | None]] | None:
        """The whole window up to the latest sample, and its `span / step` intervals,
        oldest first; None for one before the first sample. Each interval ends at the
        sample the next one starts from, so their counts add up to the window's."""
        if not self._samples:
            return None
        first, latest = self._samples[0], self._samples[-1]
        n = max(1, round(self.span / step))
        bounds = [latest.at - (n - k) * step for k in range(n + 1)]
        ends = [self.at(moment) for moment in bounds]
        points: list[Interval | None] = []
        for start, end in pairwise(ends):
            points.append(None if end is None else Interval(start or first, end))
        return Interval(ends[0] or first, latest), points


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def figures(history: History, step: float) -> dict[str, Any] | None:
    """The window's totals and its per-step series, JSON-ready."""
    found = history.intervals(step)
    if found is None:
        return None
    window, points = found
    per_minute = 60 / step

    def series(figure: Any) -> list[Any]:
        return [None if p is None else figure(p) for p in points]

    return {
        "span_s": history.span,
        "step_s": step,
        "totals": {
            "started": round(window.count("started")),
            "ended": window.ended(),
            "errors": window.errors(),
            "upstream_errors": round(window.count("upstream_errors")),
            "retries": round(window.count("retries")),
            "continuations": round(window.count("continuations")),
            "ttft_count": round(window.count("ttft:count")),
            "ttft_p50_ms": _ms(window.quantile(0.5, "ttft")),
            "ttft_p95_ms": _ms(window.quantile(0.95, "ttft")),
            "tps_count": round(window.count("tps:count")),
            "tps_mean": _round(window.mean("tps"), 1),
        },
        "series": {
            "ttft_p50_ms": series(lambda p: _ms(p.quantile(0.5, "ttft"))),
            "ttft_p95_ms": series(lambda p: _ms(p.quantile(0.95, "ttft"))),
            "tps_mean": series(lambda p: _round(p.mean("tps"), 1)),
            "errors_per_min": series(lambda p: round(p.errors() * per_minute, 2)),
            "upstream_errors_per_min": series(
                lambda p: round(p.count("upstream_errors") * per_minute, 2)
            ),
            "retries_per_min": series(lambda p: round(p.count("retries") * per_minute, 2)),
        },
    }


def state_of(stream: InFlight) -> str:
    if stream.queue_position is not None:
        return "queued"
    if stream.text_deltas:
        return "streaming"
    return "retrying" if stream.retries else "starting"


def stream_row(stream: InFlight, principal: str | None, now: float) -> dict[str, Any]:
    return {
        "stream_id": stream.stream_id,
        "principal": principal,
        "model": stream.model,
        "state": state_of(stream),
        "queue_position": stream.queue_position,
        "tokens": stream.text_deltas,
        "readers": stream.readers,
        "retries": stream.retries,
        "continuations": stream.continuations,
        "age_s": round(max(0.0, now - stream.started_at), 1),
    }


def usd(amount: Decimal) -> str:
    """Dollars as the ledger has them (8 places), without trailing zeros past the cents."""
    text = f"{amount.quantize(Decimal('1e-8')):f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _by(groups: list[UsageGroup], name: str) -> list[dict[str, Any]]:
    totals: dict[str, tuple[int, Decimal]] = {}
    for group in groups:
        key = getattr(group, name)
        streams, cost = totals.get(key, (0, Decimal(0)))
        totals[key] = (streams + group.streams, cost + group.cost_usd)
    ordered = sorted(totals.items(), key=lambda item: (-item[1][1], item[0]))
    return [{"name": key, "streams": n, "cost_usd": usd(cost)} for key, (n, cost) in ordered]


def costs_of(groups: list[UsageGroup], day: str) -> dict[str, Any]:
    """Today's usage groups (user × model) summed by principal, by model and in all."""
    return {
        "state": "on",
        "day": day,
        "by_principal": _by(groups, "user"),
        "by_model": _by(groups, "model"),
        "total": {
            "streams": sum(g.streams for g in groups),
            "cost_usd": usd(sum((g.cost_usd for g in groups), Decimal(0))),
        },
    }


@runtime_checkable
class GroupingLedger(Protocol):
    async def groups(self, usage: UsageFilter) -> list[UsageGroup]: ...


class OpsMonitor:
    """Samples the metrics for as long as the gateway runs (`start`, `aclose`), and
    hands every watcher of the operations page one snapshot per tick (`watch`)."""

    def __init__(
        self,
        manager: StreamManager,
        ledger: object | None,
        *,
        registry: CollectorRegistry = REGISTRY,
        span: float = 600.0,
        step: float = 30.0,
        every: float = 1.0,
        idle_every: float = 10.0,
        cost_every: float = 5.0,
    ) -> None:
        self._manager = manager
        self._ledger = ledger if isinstance(ledger, GroupingLedger) else None
        self._reader = registry.restricted_registry(KEYS)
        self.history = History(span)
        self._step = step
        self._every = every
        self._idle_every = idle_every
        self._cost_every = cost_every
        self._watchers = 0
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._latest: dict[str, Any] | None = None
        self._ended = False
        self._owners: dict[str, str] = {}  # stream id -> principal, of streams in flight
        self._costs: dict[str, Any] = {"state": "loading" if self._ledger else "off"}
        self._costs_at = -math.inf
        self._cost_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ops-sampler")

    async def aclose(self) -> None:
        self._end()
        tasks = [t for t in (self._task, self._cost_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def sample(self) -> None:
        self.history.add(Sample(time.monotonic(), read_sample(self._reader)))

    def watch(self) -> AsyncGenerator[dict[str, Any], None]:
        """A snapshot per tick, until the gateway has drained (or closes); Overloaded
        when it is shutting down with nothing left to show."""
        manager = self._manager
        if self._ended or (manager.draining and not manager.active_streams):
            raise Overloaded("Server is shutting down; retry on another instance", retry_after=1)
        return self._watch()

    async def _watch(self) -> AsyncGenerator[dict[str, Any], None]:
        self._watchers += 1
        if self._watchers == 1:
            self._costs_at = -math.inf  # what was known while nobody watched is stale
        self._wake.set()  # a fresh sample and snapshot now, not at the next idle tick
        sent = None
        try:
            while not self._ended:
                await self._tick.wait()
                latest = self._latest
                if latest is not None and latest is not sent:  # once each, the last too
                    sent = latest
                    yield latest
        finally:
            self._watchers -= 1

    def _end(self) -> None:
        self._ended = True
        self._tick.set()

    async def _run(self) -> None:
        while True:
            self.sample()
            if self._watchers:
                await self._publish()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every if self._watchers else self._idle_every):
                    await self._wake.wait()
            self._wake.clear()

    async def _publish(self) -> None:
        manager = self._manager
        streams = manager.in_flight()
        await self._resolve_owners(streams)
        self._refresh_costs()
        self._latest = self.snapshot(streams)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        if manager.draining and not streams:
            self._end()  # drained: the watchers' responses end, as the readers' do

    def snapshot(self, streams: list[InFlight]) -> dict[str, Any]:
        now = time.time()
        owners = self._owners
        streams = sorted(streams, key=lambda s: s.started_at)
        return {
            "instance": self._manager.instance_id,
            "time": now,
            "draining": self._manager.draining,
            "in_flight": {
                "streams": len(streams),
                "queued": sum(s.queue_position is not None for s in streams),
                "readers": sum(s.readers for s in streams),
                "rows": [stream_row(s, owners.get(s.stream_id), now) for s in streams[:MAX_ROWS]],
            },
            "metrics": figures(self.history, self._step),
            "costs": self._costs,
        }

    async def _resolve_owners(self, streams: list[InFlight]) -> None:
        """Whose each stream is, from its metadata: read once per stream."""
        owners = self._owners
        live = {s.stream_id for s in streams}
        for stream_id in [k for k in owners if k not in live]:
            del owners[stream_id]
        for stream_id in live - owners.keys():
            with contextlib.suppress(Overloaded):  # the store is unreachable: next tick
                meta = await self._manager.log.meta(stream_id)
                if meta is not None:
                    owners[stream_id] = meta.owner

    def _refresh_costs(self) -> None:
        due = time.monotonic() - self._costs_at >= self._cost_every
        if self._ledger is None or not due or self._cost_task is not None:
            return
        self._costs_at = time.monotonic()
        self._cost_task = asyncio.create_task(self._read_costs(self._ledger), name="ops-costs")
        self._cost_task.add_done_callback(self._cost_read)

    def _cost_read(self, _task: asyncio.Task[None]) -> None:
        self._cost_task = None

    async def _read_costs(self, ledger: GroupingLedger) -> None:
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        try:
            groups = await ledger.groups(UsageFilter(since=midnight))
        except LedgerUnavailable as exc:
            # What was known stays on the page, said to be old.
            self._costs = {**self._costs, "state": "unavailable", "error": exc.message}
            return
        except Exception as exc:  # a defect: the page says so, the gateway goes on
            log_event(log, "ops_costs_failed", level=logging.ERROR, error=repr(exc))
            self._costs = {**self._costs, "state": "unavailable", "error": "Internal error"}
            return
        self._costs = costs_of(groups, midnight.date().isoformat())
