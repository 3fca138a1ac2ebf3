"""The operations page's arithmetic, golden-tested: samples of the registry, the
history's intervals, per-minute rates, quantiles of histogram buckets (as Prometheus'
histogram_quantile computes them), the state of a stream in flight, costs by
principal and by model."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from tests.support import ROOT
from tokenrelay.observability.ops import (
    History,
    Interval,
    Sample,
    costs_of,
    figures,
    quantile,
    read_sample,
    state_of,
    usd,
)
from tokenrelay.streams.manager import InFlight
from tokenrelay.usage.report import UsageGroup

INF = float("inf")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Rank 2 of 4 is the top of the (0.1, 0.5] bucket, which holds the first two.
        (0.5, [(0.1, 0), (0.5, 2), (1.0, 4), (INF, 4)], 0.5),
        # Rank 3.8: 1.8 into the (0.5, 1] bucket's 2 observations, 90 % of its width.
        (0.95, [(0.1, 0), (0.5, 2), (1.0, 4), (INF, 4)], 0.95),
        # In the first bucket: from 0, not from its bound.
        (0.5, [(0.2, 4), (INF, 4)], 0.1),
        # One observation in (0.2, 0.3]: p95 is 95 % of the way through it.
        (0.95, [(0.1, 0), (0.2, 0), (0.3, 1), (INF, 1)], 0.295),
        (0.5, [(0.1, 0), (0.2, 0), (0.3, 1), (INF, 1)], 0.25),
        # Beyond the highest finite bound: that bound.
        (0.9, [(1.0, 1), (INF, 3)], 1.0),
        (0.5, [(1.0, 0), (2.0, 0), (INF, 0)], None),  # no observations
        (0.5, [(INF, 0)], None),
    ],
)
def test_quantile_interpolates_within_its_bucket_as_prometheus_does(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    result = quantile(q, buckets)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def sample(at: float, **values: float) -> Sample:
    return Sample(at, {key.replace("__", ":"): v for key, v in values.items()})


def ttft(at: float, buckets: dict[str, float], **values: float) -> Sample:
    """A sample with TTFT buckets (cumulative counts by bound) besides `values`."""
    base = sample(at, **values).values
    return Sample(at, {**base, **{f"ttft:le:{le}": n for le, n in buckets.items()}})


def test_an_interval_counts_what_changed_between_its_samples() -> None:
    start = sample(10, started=3, completed__done=2, completed__overloaded=1, retries=1)
    end = sample(
        70, started=9, completed__done=6, completed__overloaded=1, completed__cancelled=1,
        completed__api=1, retries=4,
    )  # fmt: skip
    interval = Interval(start, end)
    assert interval.count("started") == 6
    assert interval.count("upstream_errors") == 0  # in neither sample
    assert interval.ended() == {"api": 1, "cancelled": 1, "done": 4}  # overloaded: +0
    assert interval.errors() == 1  # api; done and cancelled are no errors
    assert interval.count("retries") == 3


def test_an_intervals_quantiles_are_of_the_buckets_increase() -> None:
    before = {"0.1": 5, "0.5": 5, "1.0": 5, "+Inf": 5}
    after = {"0.1": 5, "0.5": 7, "1.0": 9, "+Inf": 9}
    interval = Interval(ttft(0, before), ttft(30, after))
    # The five earlier observations under 0.1 s are not this interval's.
    assert interval.buckets("ttft") == [(0.1, 0), (0.5, 2), (1.0, 4), (INF, 4)]
    assert interval.quantile(0.5, "ttft") == pytest.approx(0.5)
    assert interval.quantile(0.95, "ttft") == pytest.approx(0.95)
    means = Interval(sample(0, tps__sum=100, tps__count=2), sample(30, tps__sum=190, tps__count=4))
    assert means.mean("tps") == 45.0  # (190 - 100) / (4 - 2)
    assert Interval(sample(0), sample(30)).mean("tps") is None


def test_history_keeps_its_span_and_one_sample_before_it() -> None:
    history = History(span=60)
    for at in range(0, 201, 10):
        history.add(sample(at, started=at))
    assert len(history) == 7  # 140 (the base of the window 140..200) to 200
    assert history.at(139.9) is None
    assert history.at(140) == sample(140, started=140)
    assert history.at(155) == sample(150, started=150)
    assert history.at(1e9) == sample(200, started=200)


def test_a_windows_intervals_tile_it_and_their_counts_add_up_to_its_own() -> None:
    history = History(span=60)
    history.add(sample(0, started=0))
    history.add(sample(10, started=2, completed__done=1, completed__overloaded=1))
    history.add(sample(20, started=2, completed__done=2, completed__overloaded=1))
    history.add(sample(35, started=5, completed__done=2, completed__overloaded=1, retries=2))
    history.add(sample(60, started=6, completed__done=4, completed__overloaded=3, retries=2))
    found = history.intervals(step=20)
    assert found is not None
    window, points = found
    # Bounds 0, 20, 40, 60: each resolved to the last sample at or before it.
    assert [(p.start.at, p.end.at) for p in points if p] == [(0, 20), (20, 35), (35, 60)]
    assert (window.start.at, window.end.at) == (0, 60)
    assert [p.count("started") for p in points if p] == [2, 3, 1]
    assert [p.errors() for p in points if p] == [1, 0, 2]
    assert window.count("started") == 6 and window.errors() == 3
    assert window.ended() == {"done": 4, "overloaded": 3}


def test_intervals_before_the_first_sample_have_no_figures() -> None:
    history = History(span=60)
    history.add(sample(100, started=1))
    history.add(sample(105, started=4))
    found = history.intervals(step=20)
    assert found is not None
    window, points = found
    # Bounds 45, 65, 85, 105: the history began inside the last interval.
    assert points[:2] == [None, None]
    last = points[2]
    assert last is not None and (last.start.at, last.end.at) == (100, 105)
    assert window.count("started") == 3
    assert History(span=60).intervals(step=20) is None


def test_figures_give_the_windows_totals_and_per_minute_series() -> None:
    history = History(span=90)
    zero = {"0.1": 0, "0.5": 0, "1.0": 0, "+Inf": 0}
    history.add(ttft(0, zero, started=0))
    history.add(
        ttft(
            30, {"0.1": 0, "0.5": 2, "1.0": 4, "+Inf": 4}, started=4, completed__done=3,
            completed__overloaded=1, upstream_errors=3, retries=2, ttft__count=4,
            tps__sum=120, tps__count=3,
        )
    )  # fmt: skip
    history.add(
        ttft(
            90, {"0.1": 1, "0.5": 3, "1.0": 5, "+Inf": 6}, started=7, completed__done=4,
            completed__overloaded=1, completed__cancelled=1, upstream_errors=3, retries=2,
            continuations=1, ttft__count=6, tps__sum=150, tps__count=4,
        )
    )  # fmt: skip
    result = figures(history, step=30)
    assert result == {
        "span_s": 90,
        "step_s": 30,
        "totals": {
            "started": 7,
            "ended": {"cancelled": 1, "done": 4, "overloaded": 1},
            "errors": 1,
            "upstream_errors": 3,
            "retries": 2,
            "continuations": 1,
            "ttft_count": 6,
            # Buckets 1, 2, 2 and 1 beyond 1 s: rank 3 of 6 is the (0.1, 0.5] bucket's
            # top; rank 5.7 is past the finite buckets' 5, so the highest bound.
            "ttft_p50_ms": 500.0,
            "ttft_p95_ms": 1000.0,
            "tps_count": 4,
            "tps_mean": 37.5,
        },
        "series": {
            # Intervals 0-30, 30-60 (no sample inside: nothing new), 60-90.
            "ttft_p50_ms": [500.0, None, 100.0],
            "ttft_p95_ms": [950.0, None, 1000.0],
            "tps_mean": [40.0, None, 30.0],
            "errors_per_min": [2.0, 0.0, 0.0],
            "upstream_errors_per_min": [6.0, 0.0, 0.0],
            "retries_per_min": [4.0, 0.0, 0.0],
        },
    }


def test_read_sample_sums_over_labels_and_keys_statuses_and_bounds() -> None:
    registry = CollectorRegistry()
    completed = Counter(
        "tokenrelay_streams_completed", "", ["route", "model", "status"], registry=registry
    )
    hist = Histogram(
        "tokenrelay_time_to_first_token_seconds", "", ["route", "model"],
        buckets=(0.1, 0.5), registry=registry,
    )  # fmt: skip
    other = Counter("tokenrelay_resets", "", registry=registry)
    completed.labels("api", "m1", "done").inc(2)
    completed.labels("messages", "m2", "done").inc()
    completed.labels("api", "m1", "overloaded").inc()
    hist.labels("api", "m1").observe(0.05)
    hist.labels("messages", "m2").observe(0.3)
    hist.labels("messages", "m2").observe(2.0)
    other.inc()
    values = read_sample(registry)
    assert values == {
        "completed:done": 3.0,
        "completed:overloaded": 1.0,
        "ttft:le:0.1": 1.0,
        "ttft:le:0.5": 2.0,
        "ttft:le:+Inf": 3.0,
        "ttft:count": 3.0,
        "ttft:sum": pytest.approx(2.35),
    }


def test_read_sample_reads_the_gateways_own_metrics_by_their_names_and_labels() -> None:
    """Against observability/metrics.py itself, bumped in a process of its own (the
    test process's registry is left alone)."""
    script = """
import json
from tokenrelay.observability import metrics as m
from tokenrelay.observability.ops import KEYS, read_sample
m.STREAMS_STARTED.labels("api", "claude-haiku-4-5").inc(3)
m.STREAMS_COMPLETED.labels("api", "claude-haiku-4-5", "done").inc(2)
m.STREAMS_COMPLETED.labels("messages", "claude-haiku-4-5", "overloaded").inc()
m.TTFT.labels("api", "claude-haiku-4-5").observe(0.25)
m.TOKENS_PER_SECOND.labels("claude-haiku-4-5").observe(40)
m.UPSTREAM_ERRORS.labels("overloaded_error").inc(3)
m.RETRIES.labels("overloaded_error").inc(2)
m.CONTINUATIONS.labels("api_error").inc()
m.RESETS.inc()
print(json.dumps(read_sample(m.REGISTRY.restricted_registry(KEYS))))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)
    buckets = {k: v for k, v in values.items() if k.startswith("ttft:le:")}
    assert {k: v for k, v in values.items() if k not in buckets} == {
        "started": 3.0,
        "completed:done": 2.0,
        "completed:overloaded": 1.0,
        "ttft:count": 1.0,
        "ttft:sum": 0.25,
        "tps:count": 1.0,
        "tps:sum": 40.0,
        "upstream_errors": 3.0,
        "retries": 2.0,
        "continuations": 1.0,
    }
    # 50 ms to 10 s, and +Inf; 0.25 s is in every bucket from 0.3 s up.
    assert buckets == {
        f"ttft:le:{le}": float(le not in ("0.05", "0.1", "0.2"))
        for le in ("0.05", "0.1", "0.2", "0.3", "0.5", "0.75", "1.0", "1.5", "2.0",
                   "3.0", "5.0", "7.5", "10.0", "+Inf")
    }  # fmt: skip


def in_flight(**fields: object) -> InFlight:
    base: dict[str, object] = {
        "stream_id": "s1", "model": "claude-haiku-4-5", "started_at": 100.0,
        "queue_position": None, "text_deltas": 0, "readers": 1, "retries": 0,
        "continuations": 0,
    }  # fmt: skip
    return InFlight(**{**base, **fields})  # type: ignore[arg-type]


def test_a_stream_in_flight_is_queued_starting_retrying_or_streaming() -> None:
    assert state_of(in_flight(queue_position=2)) == "queued"
    assert state_of(in_flight()) == "starting"
    assert state_of(in_flight(retries=1)) == "retrying"
    assert state_of(in_flight(text_deltas=5, retries=1)) == "streaming"


def test_dollars_as_the_ledger_has_them_without_trailing_zeros_past_the_cents() -> None:
    assert usd(Decimal("0.00025400")) == "0.000254"
    assert usd(Decimal("0.00000001")) == "0.00000001"
    assert usd(Decimal("12.34567891")) == "12.34567891"
    assert usd(Decimal("1.5")) == "1.50"
    assert usd(Decimal(0)) == "0.00"
    assert usd(Decimal("3")) == "3.00"


def test_costs_are_summed_by_principal_and_by_model_most_expensive_first() -> None:
    day = "2026-12-02"

    def group(user: str, model: str, streams: int, cost: str) -> UsageGroup:
        return UsageGroup(user, day, model, streams, 0, 0, Decimal(cost))

    groups = [
        group("alice", "claude-haiku-4-5", 2, "0.00012000"),
        group("alice", "claude-sonnet-4-5", 1, "0.00300000"),
        group("bob", "claude-haiku-4-5", 3, "0.00050000"),
        group("carol", "claude-haiku-4-5", 1, "0.00000000"),
    ]
    assert costs_of(groups, day) == {
        "state": "on",
        "day": day,
        "by_principal": [
            {"name": "alice", "streams": 3, "cost_usd": "0.00312"},
            {"name": "bob", "streams": 3, "cost_usd": "0.0005"},
            {"name": "carol", "streams": 1, "cost_usd": "0.00"},
        ],
        "by_model": [
            {"name": "claude-sonnet-4-5", "streams": 1, "cost_usd": "0.003"},
            {"name": "claude-haiku-4-5", "streams": 6, "cost_usd": "0.00062"},
        ],
        "total": {"streams": 7, "cost_usd": "0.00362"},
    }
