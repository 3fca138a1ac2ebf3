"""`tokenrelay bench --suite`: every scenario, direct and through the gateway, in rounds.

One `tokenrelay simulate` serves the whole suite (the anthropic provider's upstream
and the direct path alike). Each round of a scenario starts a fresh gateway, so that
its idle memory and what each open stream adds are that scenario's own (a gateway
keeps a stream's log for `stream_ttl`, and Python's heap rarely shrinks), warms both
paths, then runs the direct and the gateway phase, their order alternating from one
round to the next. Every stream asks its own question, numbered within the round
(identical requests would be coalesced or cached); the simulator answers a question
the same way every time, so each gateway stream's text must equal the direct
stream's text for the same question, exactly.

Figures of a round are in `round_figures`; a scenario's are the median of its rounds
with the spread (min and max), which is also the noise `--compare` allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from tokenrelay.client.bench import (
    PhaseResult,
    StreamResult,
    Target,
    direct_target,
    gateway_target,
    peak_redis_clients,
    percentile,
    run_phase,
)
from tokenrelay.client.bench_links import CountingProxy, keepalive_connections
from tokenrelay.client.bench_proc import TreeProbe
from tokenrelay.client.bench_text import BadResponse, claude_text, tokens_text

MODEL = "claude-haiku-4-5"
WARMUP = 10


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    concurrency: int
    total: int
    tokens: int
    tps: float  # per stream; 0: unpaced
    timeout: float = 120.0

    @property
    def paced(self) -> bool:
        return self.tps > 0


FULL = (
    Scenario("1 stream paced", 1, 20, 10, 50),
    Scenario("1 stream unpaced", 1, 100, 200, 0),
    Scenario("50 unpaced", 50, 200, 200, 0),
    Scenario("500 unpaced", 500, 500, 200, 0),
    Scenario("500 paced", 500, 500, 50, 50),
    # Long, slow streams, all opened at once: 15 s each, so all 2,000 are open together.
    Scenario("2000 held open", 2000, 2000, 30, 2, timeout=180.0),
)

QUICK = (
    Scenario("1 stream paced", 1, 3, 5, 50),
    Scenario("1 stream unpaced", 1, 5, 50, 0),
    Scenario("50 unpaced", 10, 20, 50, 0),
    Scenario("500 unpaced", 20, 20, 50, 0),
    Scenario("500 paced", 20, 20, 10, 50),
    Scenario("2000 held open", 50, 50, 6, 5),
)

# Which way each figure is better, for --compare; the direct path's own figures are
# the machine's, not the gateway's, and are not compared.
LOWER_IS_BETTER = (
    "added_ttft_p50_ms",
    "added_ttft_p99_ms",
    "gateway_ttft_p99_ms",
    "gateway_cpu_us_per_token",
    "gateway_cpu_ms_per_request",
    "gateway_loop_ms_per_request",
    "idle_rss_mib",
    "idle_pss_mib",
    "rss_kib_per_open_stream",
    "pss_kib_per_open_stream",
)
HIGHER_IS_BETTER = ("rate_kept", "gateway_tokens_per_s")


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    rounds: int = 3
    quick: bool = False
    store: str = "memory"

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        return QUICK if self.quick else FULL


# -- processes ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def launch(
    args: list[str], ready: str, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m tokenrelay ARGS` until the block ends, once `ready` answers 200.
    Waits without blocking the loop: the counting proxy runs in it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenrelay", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(ready)).status_code == 200:
                        break
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"could not start: tokenrelay {' '.join(args)}")
                await asyncio.sleep(0.1)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def simulator() -> AsyncIterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"]
    async with launch(args, f"{url}/healthz", {}):
        yield url


@contextlib.asynccontextmanager
async def gateway(upstream: str, store: str) -> AsyncIterator[tuple[str, int]]:
    """A gateway as it runs by default (ledger included, in a throwaway database), the
    anthropic provider pointed at `upstream`; yields its URL and PID."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--provider", "anthropic"]
    args += ["--anthropic-base-url", upstream, "--log-level", "warning", "--store", store]
    with tempfile.TemporaryDirectory(prefix="tokenrelay-bench-") as scratch:
        env = {
            "ANTHROPIC_API_KEY": "bench",
            "TOKENRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{scratch}/ledger.db",
        }
        async with launch(args, f"{url}/readyz", env) as proc:
            yield url, proc.pid


# -- one round ------------------------------------------------------------------------


def prompt_for(label: str, tokens: int, tps: float) -> str:
    # The placeholder becomes the stream's number (see bench.STREAM_NUMBER).
    return f"Bench {label} stream #STREAM#. [[sim:tokens={tokens}]] [[sim:tps={tps:g}]]"


def targets(
    upstream: str, gateway_url: str, label: str, tokens: int, tps: float
) -> tuple[Target, Target]:
    prompt = prompt_for(label, tokens, tps)
    return (
        direct_target(upstream, prompt, tokens, MODEL),
        gateway_target(gateway_url, prompt, tokens, MODEL),
    )


@dataclass(slots=True)
class Checked:
    """What a phase's streams delivered, checked."""

    errors: int  # failed, unfinished, or not the expected number of tokens
    completed: int
    texts: list[str | None]  # None: unreadable
    first_error: str | None  # what the first failed stream got, to tell why


def check(phase: PhaseResult, tokens: int, read: Any) -> Checked:
    texts: list[str | None] = []
    errors = completed = 0
    first_error = None
    for result in phase.results:
        text: str | None
        try:
            text = read(result.raw or [])
        except (BadResponse, ValueError, KeyError):
            text = None
        texts.append(text)
        if _failed(result, tokens) or text is None:
            errors += 1
            if first_error is None:
                tail = b"".join(result.raw or [])[-300:].decode("utf-8", "replace")
                first_error = f"{result.error or 'no error event'}, {result.tokens} tokens: {tail}"
        else:
            completed += 1
        result.raw = None  # the bytes are no longer needed
    return Checked(errors, completed, texts, first_error)


def _failed(result: StreamResult, tokens: int) -> bool:
    return bool(result.error) or not result.ended or result.tokens != tokens


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


async def run_round(scenario: Scenario, number: int, upstream: str, store: str) -> dict[str, Any]:
    """One round: a fresh gateway, both paths warmed, both phases in this round's order."""
    label = f"{scenario.name} r{number} {time.time_ns()}"
    gateway_first = number % 2 == 1
    async with gateway(upstream, store) as (gateway_url, pid):
        warm = targets(upstream, gateway_url, f"warm-up {label}", 5, 0)
        for target in warm:
            await run_phase(target, WARMUP, WARMUP, 30)
        direct, through = targets(upstream, gateway_url, label, scenario.tokens, scenario.tps)
        probe = TreeProbe((pid,))
        phases: dict[str, PhaseResult] = {}
        cpu = 0.0
        redis_peak: int | None = None
        for target in (through, direct) if gateway_first else (direct, through):
            if target is through:
                probe.start()
                done = asyncio.Event()
                redis_probe = (
                    asyncio.create_task(peak_redis_clients(store, done))
                    if store.startswith(("redis://", "rediss://"))
                    else None
                )
            phases[target.name] = await run_phase(
                target, scenario.concurrency, scenario.total, scenario.timeout, keep=True
            )
            if target is through:
                cpu = await probe.stop()
                done.set()
                if redis_probe is not None:
                    redis_peak = await redis_probe
    d = check(phases["direct"], scenario.tokens, claude_text)
    g = check(phases["gateway"], scenario.tokens, tokens_text)
    mismatches = sum(
        1 for a, b in zip(d.texts, g.texts, strict=True) if a is None or b is None or a != b
    )
    return {
        "order": "gateway first" if gateway_first else "direct first",
        "correctness": {
            "streams": scenario.total,
            "direct_errors": d.errors,
            "gateway_errors": g.errors,
            "gateway_completed": g.completed,
            "text_mismatches": mismatches,
        },
        "first_error": d.first_error or g.first_error,
        "figures": {
            **round_figures(scenario, phases["direct"], phases["gateway"], cpu, probe),
            "redis_peak_connections": redis_peak,
        },
    }


def round_figures(
    scenario: Scenario, d: PhaseResult, g: PhaseResult, cpu: float, probe: TreeProbe
) -> dict[str, float | None]:
    dt, gt = d.ttfts_ms, g.ttfts_ms
    d_rate = d.tokens / d.wall if d.wall else None
    g_rate = g.tokens / g.wall if g.wall else None
    idle, peak = probe.idle, probe.peak
    pss_growth = (
        peak.pss_kib - idle.pss_kib
        if peak.pss_kib is not None and idle.pss_kib is not None
        else None
    )
    per_stream = scenario.concurrency >= 50  # below that, growth is noise
    return {
        "direct_ttft_p50_ms": _pct(dt, 50),
        "direct_ttft_p99_ms": _pct(dt, 99),
        "gateway_ttft_p50_ms": _pct(gt, 50),
        "gateway_ttft_p99_ms": _pct(gt, 99),
        "added_ttft_p50_ms": _diff(_pct(gt, 50), _pct(dt, 50)),
        "added_ttft_p99_ms": _diff(_pct(gt, 99), _pct(dt, 99)),
        "direct_tokens_per_s": d_rate,
        "gateway_tokens_per_s": g_rate,
        "rate_kept": _ratio(g_rate, d_rate),
        "gateway_cpu_us_per_token": cpu / g.tokens * 1e6 if g.tokens else None,
        "gateway_cpu_ms_per_request": cpu / len(g.results) * 1e3,
        "gateway_loop_ms_per_request": probe.loop_cpu / len(g.results) * 1e3,
        "idle_rss_mib": idle.rss_kib / 1024,
        "idle_pss_mib": idle.pss_kib / 1024 if idle.pss_kib is not None else None,
        "peak_rss_mib": peak.rss_kib / 1024,
        "rss_kib_per_open_stream": (
            (peak.rss_kib - idle.rss_kib) / scenario.concurrency if per_stream else None
        ),
        "pss_kib_per_open_stream": (
            pss_growth / scenario.concurrency if per_stream and pss_growth is not None else None
        ),
    }


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Median and min–max over rounds; None when a round has no such figure."""
    if not values or any(v is None for v in values):
        return None
    known = [v for v in values if v is not None]
    return {"median": statistics.median(known), "min": min(known), "max": max(known)}


async def run_scenario(scenario: Scenario, config: SuiteConfig, upstream: str) -> dict[str, Any]:
    rounds = [await run_round(scenario, n, upstream, config.store) for n in range(config.rounds)]
    names = rounds[0]["figures"].keys()
    correctness = {
        key: sum(r["correctness"][key] for r in rounds) for key in rounds[0]["correctness"]
    }
    return {
        **asdict(scenario),
        "correctness": correctness,
        "figures": {k: spread([r["figures"][k] for r in rounds]) for k in names},
        "rounds": rounds,
    }


# -- the upstream and the connections -----------------------------------------------


async def simulator_rate(upstream: str, quick: bool) -> dict[str, Any]:
    """The simulator's own unpaced delivery, straight to it, many streams at once
    (what the load generator reads of it: a floor on what it can send)."""
    streams, tokens = (10, 500) if quick else (100, 2000)
    prompt = prompt_for(f"simulator rate {time.time_ns()}", tokens, 0)
    phase = await run_phase(direct_target(upstream, prompt, tokens, MODEL), 50, streams, 60)
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "errors": phase.errors(tokens),
        "tokens_per_s": phase.tokens / phase.wall,
    }


def _bodies(target: Target, count: int) -> list[bytes]:
    return [target.body.replace(b"#STREAM#", b"%d" % n) for n in range(count)]


async def connection_checks(upstream: str, store: str, requests: int) -> dict[str, Any]:
    """Connections the simulator needs for N sequential direct requests (it keeps
    them alive: 1), and upstream connections a gateway opens for N sequential streams
    (it reuses them: 1)."""
    direct = direct_target(upstream, prompt_for(f"keep-alive {time.time_ns()}", 5, 0), 5, MODEL)
    headers = direct.headers
    kept = await keepalive_connections(upstream, "/v1/messages", _bodies(direct, requests), headers)
    async with CountingProxy(upstream) as proxy, gateway(proxy.url, store) as (gateway_url, _):
        prompt = prompt_for(f"upstream reuse {time.time_ns()}", 5, 0)
        through = gateway_target(gateway_url, prompt, 5, MODEL)
        phase = await run_phase(through, 1, requests, 30)
        opened = proxy.accepted
    return {
        "requests": requests,
        "simulator_connections": kept,
        "gateway_streams_errors": phase.errors(5),
        "gateway_upstream_connections": opened,
    }


# -- the suite -------------------------------------------------------------------------


async def run_suite(config: SuiteConfig, progress: Any = None) -> dict[str, Any]:
    """Every scenario; returns the suite's JSON document (see docs/benchmarks.md)."""
    started = time.time()
    async with simulator() as upstream:
        rate = await simulator_rate(upstream, config.quick)
        links = await connection_checks(upstream, config.store, 20)
        scenarios = []
        for scenario in config.scenarios:
            if progress is not None:
                progress(scenario)
            scenarios.append(await run_scenario(scenario, config, upstream))
    problems = [
        f"{s['name']}: {c['direct_errors']} direct and {c['gateway_errors']} gateway streams "
        f"failed, {c['text_mismatches']} texts differ"
        for s in scenarios
        if (c := s["correctness"])["direct_errors"] or c["gateway_errors"] or c["text_mismatches"]
    ]
    if rate["errors"]:
        problems.append(f"the simulator's rate run: {rate['errors']} streams failed")
    if links["simulator_connections"] != 1:
        problems.append(f"the simulator needed {links['simulator_connections']} connections")
    if links["gateway_upstream_connections"] != 1 or links["gateway_streams_errors"]:
        problems.append(
            f"{links['requests']} sequential gateway streams: "
            f"{links['gateway_upstream_connections']} upstream connections, "
            f"{links['gateway_streams_errors']} failed"
        )
    return {
        "suite": "tokenrelay bench",
        "version": 1,
        "started_at": started,
        "seconds": time.time() - started,
        "config": {"rounds": config.rounds, "quick": config.quick, "store": config.store},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "simulator": rate,
        "connections": links,
        "scenarios": scenarios,
        "problems": problems,
        "ok": not problems,
    }
