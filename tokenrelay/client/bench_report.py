"""The suite's figures as tables, and `--compare`: what got worse than a previous run.

A figure is worse when its median moved the wrong way by more than the noise, taken
as the larger spread (max − min over rounds) of the two runs; with one round there
is no spread, and any move the wrong way counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenrelay.client.bench_suite import HIGHER_IS_BETTER, LOWER_IS_BETTER

_SIZE_KEYS = ("concurrency", "total", "tokens", "tps")


def _cell(figure: dict[str, float] | None, unit: str = "", digits: int = 2) -> str:
    if figure is None:
        return "–"
    median, low, high = figure["median"], figure["min"], figure["max"]
    text = f"{median:,.{digits}f}{unit}"
    if high > low:
        text += f"\n[dim]{low:,.{digits}f}–{high:,.{digits}f}[/dim]"
    return text


def _size(s: dict[str, Any]) -> str:
    pace = f"{s['tps']:g} tok/s" if s["tps"] else "unpaced"
    return f"{s['total']:,} ({s['concurrency']:,} at once)\n× {s['tokens']} tokens, {pace}"


def print_suite(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    cfg, sim, links = doc["config"], doc["simulator"], doc["connections"]
    console.print(
        f"[bold]tokenrelay bench --suite[/bold]: {cfg['rounds']} round(s) a scenario, "
        f"store {cfg['store']}{', quick' if cfg['quick'] else ''}; "
        f"{doc['seconds']:.0f} s; medians, the spread over rounds below them"
    )
    console.print(
        f"simulator unpaced: {sim['tokens_per_s']:,.0f} tokens/s "
        f"({sim['streams']} × {sim['tokens_per_stream']} tokens, {sim['errors']} errors); "
        f"{links['requests']} sequential requests: {links['simulator_connections']} "
        f"connection(s) to the simulator, {links['gateway_upstream_connections']} "
        f"upstream connection(s) from the gateway"
    )
    latency = Table(
        "scenario", "streams", "errors / texts wrong", "TTFT p50 direct", "added p50",
        "TTFT p99 direct", "added p99", "rate kept", title="Latency and rate",
    )  # fmt: skip
    redis = cfg["store"] != "memory"
    cost = Table(
        "scenario", "CPU / token", "CPU / request", "loop thread / request", "idle RSS",
        "idle PSS",
        "RSS / open stream", "PSS / open stream", title="Gateway cost",
    )  # fmt: skip
    if redis:
        cost.add_column("Redis connections, peak")
    for s in doc["scenarios"]:
        f, c = s["figures"], s["correctness"]
        wrong = f"{c['direct_errors']} + {c['gateway_errors']} / {c['text_mismatches']}"
        latency.add_row(
            s["name"], _size(s), wrong,
            _cell(f["direct_ttft_p50_ms"], " ms"), _cell(f["added_ttft_p50_ms"], " ms"),
            _cell(f["direct_ttft_p99_ms"], " ms"), _cell(f["added_ttft_p99_ms"], " ms"),
            _cell(f["rate_kept"], "×"),
        )  # fmt: skip
        cells = [
            s["name"], _cell(f["gateway_cpu_us_per_token"], " µs", 1),
            _cell(f["gateway_cpu_ms_per_request"], " ms"),
            _cell(f.get("gateway_loop_ms_per_request"), " ms"),
            _cell(f["idle_rss_mib"], " MiB", 1), _cell(f["idle_pss_mib"], " MiB", 1),
            _cell(f["rss_kib_per_open_stream"], " KiB", 1),
            _cell(f["pss_kib_per_open_stream"], " KiB", 1),
        ]  # fmt: skip
        if redis:
            cells.append(_cell(f.get("redis_peak_connections"), "", 0))
        cost.add_row(*cells)
    console.print(latency)
    console.print(cost)
    for problem in doc["problems"]:
        console.print(f"[bold red]{problem}[/bold red]")


@dataclass(frozen=True, slots=True)
class Regression:
    scenario: str
    figure: str
    before: float
    after: float
    noise: float


def compare(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[Regression], list[str]]:
    """Figures worse than in `before` by more than the noise, and scenarios not
    compared (absent from `before`, or of another size)."""
    old = {s["name"]: s for s in before.get("scenarios", [])}
    worse: list[Regression] = []
    skipped: list[str] = []
    for s in after["scenarios"]:
        prev = old.get(s["name"])
        if prev is None or any(prev.get(k) != s[k] for k in _SIZE_KEYS):
            skipped.append(s["name"])
            continue
        for name in LOWER_IS_BETTER + HIGHER_IS_BETTER:
            a, b = prev["figures"].get(name), s["figures"].get(name)
            if a is None or b is None:
                continue
            noise = max(a["max"] - a["min"], b["max"] - b["min"])
            moved = b["median"] - a["median"]
            if name in HIGHER_IS_BETTER:
                moved = -moved
            if moved > noise:
                worse.append(Regression(s["name"], name, a["median"], b["median"], noise))
    return worse, skipped


def print_comparison(
    worse: list[Regression], skipped: list[str], console: Console | None = None
) -> None:
    console = console or Console()
    for name in skipped:
        console.print(f"not compared (not in the previous run, or another size): {name}")
    if not worse:
        console.print("[green]No figure worse than the previous run beyond the noise.[/green]")
        return
    table = Table("scenario", "figure", "before", "now", "noise", title="Worse than before")
    for r in worse:
        table.add_row(
            r.scenario, r.figure, f"{r.before:,.2f}", f"{r.after:,.2f}", f"±{r.noise:,.2f}"
        )
    console.print(table)
