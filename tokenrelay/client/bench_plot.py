"""The suite's plot as a hand-written SVG: added TTFT and rate kept against concurrency.

Two panels, concurrency on a log axis; one line for the unpaced scenarios and one
for the paced ones, each point its median with the min–max of its rounds as a
whisker, and DESIGN §8's target as a dashed line.
"""

from __future__ import annotations

import math
from typing import Any

W, H = 360, 260  # one panel
LEFT, RIGHT, TOP, BOTTOM = 66, 16, 34, 44
SERIES = (("unpaced", "#1f77b4", False), ("paced", "#d62728", True))
FLOOR_MS = 0.1  # the log axis' bottom: an added TTFT at or below it is drawn there


def _log_ticks(low: float, high: float) -> list[float]:
    return [10.0**e for e in range(round(math.log10(low)), round(math.log10(high)) + 1)]


def _tick_label(v: float) -> str:
    return f"{v:g}" if v < 1 else f"{v:,.0f}"


class _Panel:
    def __init__(self, x0: int, title: str, x_max: float, y: tuple[float, float], log_y: bool):
        self.x0, self.title, self.log_y = x0, title, log_y
        self.x_lo, self.x_hi = 0.0, math.log10(max(x_max, 10))
        self.y_lo, self.y_hi = (math.log10(y[0]), math.log10(y[1])) if log_y else y
        self.parts: list[str] = []

    def px(self, concurrency: float) -> float:
        span = W - LEFT - RIGHT
        frac = (math.log10(concurrency) - self.x_lo) / (self.x_hi - self.x_lo)
        return self.x0 + LEFT + frac * span

    def py(self, value: float) -> float:
        v = math.log10(max(value, FLOOR_MS)) if self.log_y else value
        frac = (v - self.y_lo) / (self.y_hi - self.y_lo)
        return TOP + (1 - frac) * (H - TOP - BOTTOM)

    def axes(self, x_ticks: list[float], y_ticks: list[float], y_unit: str) -> None:
        x1, x2 = self.x0 + LEFT, self.x0 + W - RIGHT
        y1, y2 = TOP, H - BOTTOM
        p = self.parts
        p.append(f'<text x="{self.x0 + W / 2}" y="18" class="t">{self.title}</text>')
        p.append(f'<rect x="{x1}" y="{y1}" width="{x2 - x1}" height="{y2 - y1}" class="box"/>')
        for t in x_ticks:
            x = self.px(t)
            p.append(f'<line x1="{x:.1f}" y1="{y2}" x2="{x:.1f}" y2="{y2 + 4}" class="ax"/>')
            p.append(f'<text x="{x:.1f}" y="{y2 + 16}" class="l">{t:g}</text>')
        for t in y_ticks:
            y = self.py(t)
            p.append(f'<line x1="{x1}" y1="{y:.1f}" x2="{x2}" y2="{y:.1f}" class="grid"/>')
            label = _tick_label(t) if self.log_y else f"{t:g}"
            p.append(f'<text x="{x1 - 5}" y="{y + 4:.1f}" class="l r">{label}{y_unit}</text>')
        p.append(f'<text x="{self.x0 + W / 2}" y="{H - 8}" class="l">streams at once</text>')

    def target(self, value: float, label: str) -> None:
        y = self.py(value)
        x1, x2 = self.x0 + LEFT, self.x0 + W - RIGHT
        self.parts.append(f'<line x1="{x1}" y1="{y:.1f}" x2="{x2}" y2="{y:.1f}" class="goal"/>')
        self.parts.append(f'<text x="{x2 - 4}" y="{y - 4:.1f}" class="l r g">{label}</text>')

    def series(self, points: list[tuple[float, dict[str, float]]], colour: str) -> None:
        if not points:
            return
        line = " ".join(f"{self.px(c):.1f},{self.py(f['median']):.1f}" for c, f in points)
        self.parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}"/>')
        for c, f in points:
            x = self.px(c)
            lo, hi = self.py(f["min"]), self.py(f["max"])
            self.parts.append(
                f'<line x1="{x:.1f}" y1="{lo:.1f}" x2="{x:.1f}" y2="{hi:.1f}" stroke="{colour}"/>'
            )
            y = self.py(f["median"])
            self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')


def _points(doc: dict[str, Any], figure: str, paced: bool) -> list[tuple[float, dict[str, float]]]:
    found = [
        (float(s["concurrency"]), s["figures"][figure])
        for s in doc["scenarios"]
        if bool(s["tps"]) == paced and s["figures"].get(figure) is not None
    ]
    return sorted(found, key=lambda p: p[0])


def suite_svg(doc: dict[str, Any]) -> str:
    x_max = max(s["concurrency"] for s in doc["scenarios"])
    x_ticks = [t for t in (1.0, 10.0, 100.0, 1000.0, 10000.0) if t <= max(x_max, 10) * 1.0001]
    added = [f for p in (False, True) for _, f in _points(doc, "added_ttft_p50_ms", p)]
    # The axis ends at the decade above the highest whisker.
    high = 10.0 ** math.ceil(math.log10(max([FLOOR_MS * 10] + [f["max"] for f in added])))
    ttft = _Panel(0, "added time to first token, p50", x_max, (FLOOR_MS, high), True)
    rate = _Panel(W, "token rate kept vs direct", x_max, (0.0, 1.2), False)
    ttft.axes(x_ticks, _log_ticks(FLOOR_MS, high), " ms")
    rate.axes(x_ticks, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2], "×")
    ttft.target(1.0, "target ≤ 1 ms")
    rate.target(0.95, "target ≥ 0.95×")
    for _, colour, paced in SERIES:
        ttft.series(_points(doc, "added_ttft_p50_ms", paced), colour)
        rate.series(_points(doc, "rate_kept", paced), colour)
    legend = []
    for i, (name, colour, _) in enumerate(SERIES):
        x = W * 2 - 170 + i * 80
        legend.append(
            f'<line x1="{x}" y1="{H + 10}" x2="{x + 18}" y2="{H + 10}" stroke="{colour}"/>'
        )
        legend.append(f'<text x="{x + 22}" y="{H + 14}" class="l s">{name}</text>')
    cfg = doc["config"]
    note = f"{cfg['rounds']} round(s), store {cfg['store']}{', quick' if cfg['quick'] else ''}"
    legend.append(f'<text x="8" y="{H + 14}" class="l s">{note}; whiskers: min–max</text>')
    style = (
        "<style>text{font:11px sans-serif;fill:#222;text-anchor:middle}"
        ".t{font-weight:bold;font-size:12px}.r{text-anchor:end}.s{text-anchor:start}"
        ".g{fill:#2a2}.box{fill:none;stroke:#888}.ax{stroke:#888}"
        ".grid{stroke:#e4e4e4}.goal{stroke:#2a2;stroke-dasharray:5 4}"
        "polyline,line{stroke-width:1.6}</style>"
    )
    body = "\n".join(ttft.parts + rate.parts + legend)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * 2}" height="{H + 24}" '
        f'viewBox="0 0 {W * 2} {H + 24}">\n{style}\n'
        f'<rect width="100%" height="100%" fill="#fff"/>\n{body}\n</svg>\n'
    )
