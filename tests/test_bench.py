"""`tokenrelay bench --suite --quick`, run for real: the JSON's shape and its exact
correctness figures (every stream complete, every text the direct path's, one
connection each way), never its timings; `--compare` flags a figure worse than a
previous run's beyond the noise and exits 1; the plot is an SVG with its lines.
Plus the text reader and the comparison on their own."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT
from tests.support.services import redis_server
from tokenrelay.client.bench_report import compare
from tokenrelay.client.bench_suite import HIGHER_IS_BETTER, LOWER_IS_BETTER, QUICK
from tokenrelay.client.bench_text import BadResponse, claude_text, http_body, tokens_text

ROUNDS = 2
FIGURES = {
    "direct_ttft_p50_ms", "direct_ttft_p99_ms", "gateway_ttft_p50_ms", "gateway_ttft_p99_ms",
    "added_ttft_p50_ms", "added_ttft_p99_ms", "direct_tokens_per_s", "gateway_tokens_per_s",
    "rate_kept", "gateway_cpu_us_per_token", "gateway_cpu_ms_per_request",
    "gateway_loop_ms_per_request", "idle_rss_mib",
    "idle_pss_mib", "peak_rss_mib", "rss_kib_per_open_stream", "pss_kib_per_open_stream",
    "redis_peak_connections",
}  # fmt: skip
# Memory per open stream is only a figure with enough streams open to measure it;
# Redis connections, only on the Redis store.
PER_STREAM = {"rss_kib_per_open_stream", "pss_kib_per_open_stream"}
REDIS_ONLY = {"redis_peak_connections"}
TICK_MS = 10.0  # the longest scheduler tick of a common kernel (HZ=100)


def _spread(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value}


def _previous() -> dict[str, Any]:
    """A previous run of the same scenarios, its CPU per token better than any real
    one and its rate kept worse than any: exactly one figure per scenario got worse."""
    return {
        "scenarios": [
            {
                "name": s.name, "concurrency": s.concurrency, "total": s.total,
                "tokens": s.tokens, "tps": s.tps,
                "figures": {
                    "gateway_cpu_us_per_token": _spread(0.001),
                    "rate_kept": _spread(0.0001),
                },
            }
            for s in QUICK
        ]
    }  # fmt: skip


def test_the_quick_suite_checks_every_stream_and_compares(tmp_path: Path) -> None:
    out, svg, previous = tmp_path / "bench.json", tmp_path / "bench.svg", tmp_path / "prev.json"
    previous.write_text(json.dumps(_previous()))
    run = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "bench", "--suite", "--quick",
         "--rounds", str(ROUNDS), "--json-file", str(out), "--svg", str(svg),
         "--compare", str(previous)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert doc["problems"] == [] and doc["ok"] is True, doc["problems"]
    # Exit 1: the figures worse than the previous run's, and only those.
    assert run.returncode == 1, run.stdout + run.stderr
    worse = doc["compared_with"]["worse"]
    assert sorted((w["scenario"], w["figure"]) for w in worse) == sorted(
        (s.name, "gateway_cpu_us_per_token") for s in QUICK
    )
    assert doc["compared_with"]["not_compared"] == []
    assert "Worse than before" in run.stdout

    assert doc["config"] == {"rounds": ROUNDS, "quick": True, "store": "memory"}
    assert doc["simulator"]["errors"] == 0 and doc["simulator"]["tokens_per_s"] > 0
    assert doc["connections"] == {
        "requests": 20,
        "simulator_connections": 1,
        "gateway_streams_errors": 0,
        "gateway_upstream_connections": 1,
    }
    assert [s["name"] for s in doc["scenarios"]] == [s.name for s in QUICK]
    for scenario, s in zip(QUICK, doc["scenarios"], strict=True):
        assert (s["concurrency"], s["total"], s["tokens"], s["tps"]) == (
            scenario.concurrency, scenario.total, scenario.tokens, scenario.tps,
        )  # fmt: skip
        assert s["correctness"] == {
            "streams": scenario.total * ROUNDS,
            "direct_errors": 0,
            "gateway_errors": 0,
            "gateway_completed": scenario.total * ROUNDS,
            "text_mismatches": 0,
        }
        assert [r["order"] for r in s["rounds"]] == ["direct first", "gateway first"]
        assert all(r["first_error"] is None for r in s["rounds"])
        assert set(s["figures"]) == FIGURES
        for name, figure in s["figures"].items():
            if name in REDIS_ONLY or (name in PER_STREAM and scenario.concurrency < 50):
                assert figure is None, name
                continue
            assert set(figure) == {"median", "min", "max"}, name
            values = [r["figures"][name] for r in s["rounds"]]
            assert figure["min"] == min(values) and figure["max"] == max(values)
            assert figure["min"] <= figure["median"] <= figure["max"]
        # The event loop's thread is part of the process: some of its CPU, never more
        # (but for the scheduler's last tick, which a running thread's schedstat lags).
        for r in s["rounds"]:
            loop, whole = (r["figures"][k] for k in ("gateway_loop_ms_per_request",
                                                     "gateway_cpu_ms_per_request"))  # fmt: skip
            assert 0 < loop <= whole + TICK_MS / scenario.total, (loop, whole)

    plot = ET.parse(svg).getroot()
    lines = plot.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 4  # unpaced and paced, in each of the two panels
    # Each line has a point per scenario of its kind (three each).
    assert sorted(len(p.get("points", "").split()) for p in lines) == [3, 3, 3, 3]


def test_compare_allows_the_noise_and_flags_beyond_it() -> None:
    def doc(cpu: tuple[float, float, float], rate: tuple[float, float, float]) -> dict[str, Any]:
        return {
            "scenarios": [
                {
                    "name": "x", "concurrency": 1, "total": 1, "tokens": 1, "tps": 0,
                    "figures": {
                        "gateway_cpu_us_per_token": dict(median=cpu[0], min=cpu[1], max=cpu[2]),
                        "rate_kept": dict(median=rate[0], min=rate[1], max=rate[2]),
                        "idle_rss_mib": None,
                    },
                }
            ]
        }  # fmt: skip

    before = doc((30, 28, 32), (0.875, 0.75, 1.0))
    # Worse by the noise (the wider spread of the two runs, 4 µs and 0.25×): not flagged.
    assert compare(before, doc((34, 33, 35), (0.625, 0.5, 0.75))) == ([], [])
    worse, skipped = compare(before, doc((34.5, 34, 35), (0.5, 0.5, 0.5)))
    assert skipped == []
    assert [(w.figure, w.before, w.after, w.noise) for w in worse] == [
        ("gateway_cpu_us_per_token", 30, 34.5, 4),
        ("rate_kept", 0.875, 0.5, 0.25),
    ]
    # Better by any amount is never flagged.
    assert compare(before, doc((1, 1, 1), (2.0, 2.0, 2.0))) == ([], [])
    other_size = doc((99, 99, 99), (0.1, 0.1, 0.1))
    other_size["scenarios"][0]["total"] = 2
    assert compare(before, other_size) == ([], ["x"])
    assert set(LOWER_IS_BETTER).isdisjoint(HIGHER_IS_BETTER)


def _chunked(*chunks: bytes) -> list[bytes]:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    # Read in pieces that cut through the framing, as a socket may.
    whole = head + body
    return [whole[i : i + 7] for i in range(0, len(whole), 7)]


def test_the_text_is_read_through_chunks_that_split_lines() -> None:
    frames = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hel"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"lo \\u00e9"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert claude_text(_chunked(frames[:50], frames[50:111], frames[111:])) == "Hello é"
    tokens = (
        b'id: s:1\ndata: {"token":"one"}\n\nid: s:2\ndata: {"reset":true,"reason":"x"}\n\n'
        b'id: s:3\ndata: {"token":"two"}\n\nid: s:4\ndata: {"token":" three"}\n\n'
    )
    assert tokens_text(_chunked(tokens[:30], tokens[30:])) == "two three"
    assert http_body([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"]) == b"hi"


def test_a_cut_or_failed_response_is_not_read_as_text() -> None:
    whole = b"".join(_chunked(b'data: {"token":"a"}\n\n'))
    with pytest.raises(BadResponse):
        tokens_text([whole[:-12]])  # the last chunk never came
    with pytest.raises(BadResponse):
        tokens_text([b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"])


def test_several_instances_on_redis_behind_nginx_are_measured_together(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    with redis_server(tmp_path / "redis") as redis:
        run = subprocess.run(
            [sys.executable, "-m", "tokenrelay", "bench", "--instances", "2",
             "--store", redis.url, "-c", "6", "-n", "12", "--tokens", "7", "--tps", "0",
             "--json-file", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert (doc["gateway_instances"], doc["streams"], doc["tokens_per_stream"]) == (2, 12, 7)
    assert (doc["direct_errors"], doc["gateway_errors"], doc["gateway_tokens"]) == (0, 0, 84)
    # Both gateways' CPU and nginx's apart, each per delivered token; the gateways'
    # event loops per request, a part of their CPU.
    assert doc["gateway_cpu_us_per_token"] > 0 and doc["proxy_cpu_us_per_token"] > 0
    whole_ms_per_request = doc["gateway_cpu_s"] / doc["streams"] * 1e3
    loop = doc["gateway_loop_ms_per_request"]
    assert 0 < loop <= whole_ms_per_request + 2 * TICK_MS / doc["streams"]
    assert doc["redis_peak_connections"] >= 2  # at least one connection per instance


def test_several_instances_need_a_shared_redis() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "bench", "--instances", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--instances starts the gateways itself, on a shared Redis" in run.stderr
