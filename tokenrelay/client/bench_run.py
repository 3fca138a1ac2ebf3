"""Running `tokenrelay bench`: start what was not given, measure, print the comparison."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from tokenrelay.client.bench import BenchConfig, Comparison, compare
from tokenrelay.client.bench_nginx import nginx_in_front
from tokenrelay.client.bench_suite import SuiteConfig

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _launch(args: list[str], ready: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"could not start: tokenrelay {' '.join(args)}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_bench(
    config: BenchConfig,
    *,
    gateway: str | None,
    upstream: str | None,
    gateway_pids: tuple[int, ...],
    json_out: bool,
    store: str = "memory",
    json_file: str | None = None,
    instances: int = 1,
) -> bool:
    """`instances` > 1: that many gateways on the `store` (Redis), behind nginx."""
    proxy_pid = None
    with contextlib.ExitStack() as stack:
        if upstream is None:
            port = _free_port()
            upstream = f"http://127.0.0.1:{port}"
            sim = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"]
            stack.enter_context(_launch(sim, f"{upstream}/healthz", {}))
        if gateway is None:
            # The gateway as it runs by default, ledger included, in a throwaway database.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="tokenrelay-bench-"))
            env = {
                "ANTHROPIC_API_KEY": "bench",
                "TOKENRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{scratch}/ledger.db",
                "TOKENRELAY_MAX_CONCURRENT": str(config.max_concurrent),
                "TOKENRELAY_QUEUE_SIZE": str(config.queue_size),
                # A queued stream waits as long as the bench lets any stream run.
                "TOKENRELAY_QUEUE_TIMEOUT": str(config.timeout),
                "TOKENRELAY_QUEUE_PER_PRINCIPAL": str(config.queue_size),
            }
            ports = [_free_port() for _ in range(instances)]
            pids = []
            for port in ports:
                serve = ["serve", "--port", str(port), "--provider", "anthropic"]
                serve += ["--anthropic-base-url", upstream, "--log-level", "warning"]
                serve += ["--store", store]
                ready = f"http://127.0.0.1:{port}/readyz"
                pids.append(stack.enter_context(_launch(serve, ready, env)).pid)
            gateway_pids = tuple(pids)
            if instances == 1:
                gateway = f"http://127.0.0.1:{ports[0]}"
            else:
                port = _free_port()
                workdir = Path(scratch) / "nginx"
                workdir.mkdir()
                proxy_pid = stack.enter_context(nginx_in_front(workdir, port, ports))
                gateway = f"http://127.0.0.1:{port}"
        redis_url = store if store.startswith(("redis://", "rediss://")) else None
        result = _run(compare(gateway, upstream, config, gateway_pids, redis_url, proxy_pid))
    summary = result.summary()
    if json_file:
        with open(json_file, "wb") as f:
            f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if json_out:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print_comparison(result)
    return summary["gateway_errors"] == 0 and summary["direct_errors"] == 0


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _fmt(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:,.2f}{unit}"


def print_comparison(result: Comparison) -> None:
    s = result.summary()
    cfg = result.config
    console = Console()
    console.print(
        f"[bold]tokenrelay bench[/bold]: {cfg.total} streams, {cfg.concurrency} at once, "
        f"{cfg.tokens} tokens each at {cfg.tps:g} tok/s, upstream TTFT {cfg.ttft_ms} ms"
    )
    table = Table("figure", "direct", "gateway", "added / ratio")
    table.add_row(
        "errors (or wrong token count)", _fmt(s["direct_errors"]), _fmt(s["gateway_errors"]), ""
    )
    table.add_row(
        "TTFT p50",
        _fmt(s["direct_ttft_p50_ms"], " ms"),
        _fmt(s["gateway_ttft_p50_ms"], " ms"),
        _fmt(s["added_ttft_p50_ms"], " ms"),
    )
    table.add_row(
        "TTFT p99",
        _fmt(s["direct_ttft_p99_ms"], " ms"),
        _fmt(s["gateway_ttft_p99_ms"], " ms"),
        _fmt(s["added_ttft_p99_ms"], " ms"),
    )
    table.add_row(
        "tokens/s (all streams)",
        _fmt(s["direct_tokens_per_s"]),
        _fmt(s["gateway_tokens_per_s"]),
        _fmt(s["rate_kept_vs_direct"], "×"),
    )
    table.add_row(
        "gateway CPU",
        "",
        _fmt(s["gateway_cpu_s"], " s"),
        _fmt(s["gateway_cpu_us_per_token"], " µs/token"),
    )
    if s["gateway_loop_ms_per_request"] is not None:
        table.add_row(
            "gateway loop thread", "", "", _fmt(s["gateway_loop_ms_per_request"], " ms/request")
        )
    if s["proxy_cpu_us_per_token"] is not None:
        table.add_row("nginx CPU", "", "", _fmt(s["proxy_cpu_us_per_token"], " µs/token"))
    if s["redis_peak_connections"] is not None:
        table.add_row("Redis connections, peak", "", _fmt(s["redis_peak_connections"]), "")
    if s["gateway_queued_streams"]:
        table.add_row("streams that waited in the queue", "", _fmt(s["gateway_queued_streams"]), "")
        table.add_row(
            "their TTFT (the wait) p50 / p99",
            "",
            _fmt(s["queued_ttft_p50_ms"], " ms"),
            _fmt(s["queued_ttft_p99_ms"], " ms"),
        )
    table.add_row(
        "gateway RSS idle → peak",
        "",
        f"{_fmt(s['gateway_idle_rss_mib'])} → {_fmt(s['gateway_peak_rss_mib'], ' MiB')}",
        _fmt(s["gateway_kib_per_stream"], " KiB/stream"),
    )
    console.print(table)


def run_suite_command(
    config: SuiteConfig,
    *,
    json_file: str | None,
    json_out: bool,
    previous: str | None,
    svg: str | None,
) -> int:
    """`tokenrelay bench --suite`: run it, print it, save it; the exit code: 1 when a
    stream was wrong or a connection not reused, or a figure is worse than `previous`."""
    from pathlib import Path

    from tokenrelay.client.bench_plot import suite_svg
    from tokenrelay.client.bench_report import compare, print_comparison, print_suite
    from tokenrelay.client.bench_suite import run_suite

    before = orjson.loads(Path(previous).read_bytes()) if previous else None  # fail early
    # Wide enough for the tables in a log file too; stdout is the JSON's with --json.
    console = Console(stderr=json_out, width=None if sys.stdout.isatty() else 150)
    with _more_open_files():
        doc = _run(run_suite(config, lambda s: console.print(f"[dim]{s.name}…[/dim]")))
    worse_count = 0
    if before is not None:
        worse, skipped = compare(before, doc)
        doc["compared_with"] = {
            "path": previous,
            "worse": [asdict(w) for w in worse],
            "not_compared": skipped,
        }
        worse_count = len(worse)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    if json_file:
        Path(json_file).write_bytes(data + b"\n")
    if svg:
        Path(svg).write_text(suite_svg(doc))
    if json_out:
        print(data.decode())
    print_suite(doc, console)
    if before is not None:
        print_comparison(worse, skipped, console)
    return 0 if doc["ok"] and worse_count == 0 else 1


@contextlib.contextmanager
def _more_open_files() -> Iterator[None]:
    """Thousands of streams at once: the client's sockets and, inherited, the gateway's
    and the simulator's need that many descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
