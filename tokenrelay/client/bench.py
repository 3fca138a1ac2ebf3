"""`tokenrelay bench`: the gateway against a direct connection to its upstream, in one run.

Each phase opens C concurrent streams (R in all) of the same paced request, once
straight to the upstream's `/v1/messages` and once through the gateway's
`/api/stream-response`, and checks that every stream delivered exactly the expected
number of tokens and ended properly. The client is a minimal raw-socket HTTP/1.1
reader, so that the load generator costs as little CPU as possible on a small machine
it shares with the servers it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from tokenrelay.client.bench_proc import TreeProbe


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    path: str
    body: bytes
    headers: str
    token_marker: bytes
    end_marker: bytes
    error_marker: bytes
    queued_marker: bytes = b"\x00"  # never in a direct stream


@dataclass(slots=True)
class StreamResult:
    ttft: float | None = None
    tokens: int = 0
    ended: bool = False
    error: str | None = None
    queued: bool = False  # it waited in the gateway's queue (a `queued` event came)
    # The whole response as read, when asked for: its text is checked after the phase,
    # so that parsing costs nothing while the phase is measured.
    raw: list[bytes] | None = None


@dataclass(slots=True)
class PhaseResult:
    name: str
    results: list[StreamResult]
    wall: float
    cpu_seconds: float | None = None
    peak_rss_kib: int | None = None
    idle_rss_kib: int | None = None
    redis_peak_connections: int | None = None
    proxy_cpu_seconds: float | None = None  # the load balancer's, with --instances
    loop_cpu_seconds: float | None = None  # the gateways' main threads (event loops)

    @property
    def ttfts_ms(self) -> list[float]:
        return sorted(r.ttft * 1000 for r in self.results if r.ttft is not None)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    def errors(self, expected_tokens: int) -> int:
        return sum(1 for r in self.results if r.error or not r.ended or r.tokens != expected_tokens)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# Each stream asks its own question (the placeholder becomes its number): identical
# concurrent requests would be coalesced into one upstream call, or served from a cache.
STREAM_NUMBER = b"#STREAM#"


def prompt_for(tokens: int, tps: float, ttft_ms: int) -> str:
    return (
        f"Benchmark stream {STREAM_NUMBER.decode()}. [[sim:tokens={tokens}]] "
        f"[[sim:tps={tps:g}]] [[sim:ttft_ms={ttft_ms}]]"
    )


def direct_target(upstream: str, prompt: str, tokens: int, model: str) -> Target:
    body = orjson.dumps(
        {
            "model": model,
            "max_tokens": tokens + 10,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        }
    )
    headers = "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"
    return Target(
        "direct", upstream, "/v1/messages", body, headers,
        b'"text_delta"', b"event: message_stop", b"event: error",
    )  # fmt: skip


def gateway_target(gateway: str, prompt: str, tokens: int, model: str) -> Target:
    body = orjson.dumps({"prompt": prompt, "model": model, "max_tokens": tokens + 10})
    return Target(
        "gateway", gateway, "/api/stream-response", body, "",
        b'{"token":', b'{"done":true', b'{"error":', b'{"queued":true',
    )  # fmt: skip


async def run_stream(
    target: Target, stream_timeout: float, number: int = 0, keep: bool = False
) -> StreamResult:
    result = StreamResult()
    raw = result.raw = [] if keep else None
    parts = urlsplit(target.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = target.body.replace(STREAM_NUMBER, b"%d" % number)
    request = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{target.headers}\r\n"
    ).encode() + body
    marker, end, err = target.token_marker, target.end_marker, target.error_marker
    queued = target.queued_marker
    carry = len(max(marker, end, err, queued, key=len)) - 1
    started = time.perf_counter()
    try:
        async with asyncio.timeout(stream_timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                tail = b""
                while chunk := await reader.read(65536):
                    if raw is not None:
                        raw.append(chunk)
                    window = tail + chunk
                    count = window.count(marker) - tail.count(marker)
                    if count and result.ttft is None:
                        result.ttft = time.perf_counter() - started
                    result.tokens += count
                    if end in window:
                        result.ended = True
                    if err in window and result.error is None:
                        result.error = "error event"
                    if not result.queued and queued in window:
                        result.queued = True
                    tail = window[-carry:]
            finally:
                writer.close()
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = type(exc).__name__
    return result


async def run_phase(
    target: Target, concurrency: int, total: int, stream_timeout: float, keep: bool = False
) -> PhaseResult:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int) -> StreamResult:
        async with semaphore:
            return await run_stream(target, stream_timeout, number, keep)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(n) for n in range(total)))
    return PhaseResult(target.name, list(results), time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    concurrency: int = 100
    total: int = 200
    tokens: int = 50
    tps: float = 50.0
    ttft_ms: int = 0
    model: str = "claude-haiku-4-5"
    timeout: float = 120.0
    warmup: int = 10
    # The gateway bench starts: its cap on concurrent upstream calls and its queue.
    max_concurrent: int = 0
    queue_size: int = 0


@dataclass(slots=True)
class Comparison:
    config: BenchConfig
    direct: PhaseResult
    gateway: PhaseResult
    instances: int = 1  # gateway processes measured together (behind a balancer)

    def summary(self) -> dict[str, float | int | None]:
        cfg, d, g = self.config, self.direct, self.gateway
        dt, gt = d.ttfts_ms, g.ttfts_ms
        out: dict[str, float | int | None] = {
            "concurrency": cfg.concurrency,
            "gateway_instances": self.instances,
            "streams": cfg.total,
            "tokens_per_stream": cfg.tokens,
            "direct_errors": d.errors(cfg.tokens),
            "gateway_errors": g.errors(cfg.tokens),
            "gateway_tokens": g.tokens,
            "direct_ttft_p50_ms": percentile(dt, 50),
            "direct_ttft_p99_ms": percentile(dt, 99),
            "gateway_ttft_p50_ms": percentile(gt, 50),
            "gateway_ttft_p99_ms": percentile(gt, 99),
            "added_ttft_p50_ms": percentile(gt, 50) - percentile(dt, 50),
            "added_ttft_p99_ms": percentile(gt, 99) - percentile(dt, 99),
            "direct_tokens_per_s": d.tokens / d.wall,
            "gateway_tokens_per_s": g.tokens / g.wall,
            "rate_kept_vs_direct": (g.tokens / g.wall) / (d.tokens / d.wall) if d.tokens else None,
            "gateway_cpu_s": g.cpu_seconds,
            "gateway_cpu_us_per_token": (
                g.cpu_seconds / g.tokens * 1e6 if g.cpu_seconds is not None and g.tokens else None
            ),
            "gateway_loop_ms_per_request": (
                g.loop_cpu_seconds / len(g.results) * 1e3
                if g.loop_cpu_seconds is not None and g.results
                else None
            ),
            "proxy_cpu_us_per_token": (
                g.proxy_cpu_seconds / g.tokens * 1e6
                if g.proxy_cpu_seconds is not None and g.tokens
                else None
            ),
            "gateway_idle_rss_mib": g.idle_rss_kib / 1024 if g.idle_rss_kib else None,
            "gateway_peak_rss_mib": g.peak_rss_kib / 1024 if g.peak_rss_kib else None,
            "redis_peak_connections": g.redis_peak_connections,
            "gateway_kib_per_stream": (
                (g.peak_rss_kib - g.idle_rss_kib) / cfg.concurrency
                if g.peak_rss_kib and g.idle_rss_kib
                else None
            ),
        }
        waited = sorted(r.ttft * 1000 for r in g.results if r.queued and r.ttft is not None)
        out["gateway_queued_streams"] = sum(r.queued for r in g.results)
        # For a queued stream the time to its first token is mostly its wait.
        out["queued_ttft_p50_ms"] = percentile(waited, 50) if waited else None
        out["queued_ttft_p99_ms"] = percentile(waited, 99) if waited else None
        return out


async def peak_redis_clients(url: str, until: asyncio.Event) -> int:
    """The most clients Redis had connected while the phase ran (this probe excluded)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    peak = 0
    try:
        while not until.is_set():
            info = await client.info("clients")
            peak = max(peak, int(info["connected_clients"]) - 1)
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    return peak


async def compare(
    gateway: str,
    upstream: str,
    config: BenchConfig,
    gateway_pids: tuple[int, ...],
    redis_url: str | None = None,
    proxy_pid: int | None = None,
) -> Comparison:
    """`gateway_pids`: the processes measured (with what runs under them), summed;
    none: the gateway's CPU and memory are not measured. `proxy_pid`: a load balancer
    in front of them, measured apart."""
    prompt = prompt_for(config.tokens, config.tps, config.ttft_ms)
    direct = direct_target(upstream, prompt, config.tokens, config.model)
    through = gateway_target(gateway, prompt, config.tokens, config.model)
    for target in (direct, through):  # connections, caches and code paths warmed alike
        await run_phase(target, min(config.warmup, config.concurrency), config.warmup, 30)
    direct_result = await run_phase(direct, config.concurrency, config.total, config.timeout)
    probe = TreeProbe(gateway_pids) if gateway_pids else None
    proxy = TreeProbe((proxy_pid,)) if proxy_pid else None
    for each in (probe, proxy):
        if each is not None:
            each.start()
    phase_done = asyncio.Event()
    redis_probe = (
        asyncio.create_task(peak_redis_clients(redis_url, phase_done)) if redis_url else None
    )
    gateway_result = await run_phase(through, config.concurrency, config.total, config.timeout)
    phase_done.set()
    if redis_probe is not None:
        gateway_result.redis_peak_connections = await redis_probe
    if probe:
        gateway_result.cpu_seconds = await probe.stop()
        gateway_result.loop_cpu_seconds = probe.loop_cpu
        gateway_result.peak_rss_kib = probe.peak.rss_kib
        gateway_result.idle_rss_kib = probe.idle.rss_kib
    if proxy:
        gateway_result.proxy_cpu_seconds = await proxy.stop()
    return Comparison(config, direct_result, gateway_result, max(1, len(gateway_pids)))
