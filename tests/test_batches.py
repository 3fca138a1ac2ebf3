"""Batches over real sockets: `tokenrelay simulate` as the upstream (its Message Batches
API), a gateway on it through the official SDK, and `tokenrelay batch …` as the client.

A batch of 300 with 10 faulted requests submitted by the CLI, watched to its end, its
results matched to their custom ids with the texts the simulator gives the same
requests directly, its ledger rows one per request at exactly the discounted price;
recorded once however many read it (and by the refresher when nobody does), on SQLite
and PostgreSQL; another key gets 404; bad lines are refused with their numbers, nothing
sent; cancel; results before the end are a 409; no Batch API upstream, no database: 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson

from tests.support import FAST_GATEWAY_ENV, assert_error, eventually, free_port, spawn, unique
from tests.support.auth import api_key_auth, create_key, tokenrelay_cli
from tests.support.logs import log_events
from tokenrelay.pricing import ModelTable

MODEL = "claude-haiku-4-5"
PRICES = ModelTable().models[MODEL]
OVERLOADED = {"type": "overloaded_error", "message": "Simulated overloaded_error"}


@dataclass
class BatchStack:
    gateway: str
    simulator: str
    key: str  # alice's
    other: str  # bob's
    log: Path

    def as_alice(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gateway, timeout=60,
                                 headers={"x-api-key": self.key})  # fmt: skip

    def cli(self, *args: str, key: str | None = None) -> Any:
        return tokenrelay_cli("batch", *args, "--url", self.gateway,
                              TOKENRELAY_API_KEY=key or self.key)  # fmt: skip

    def upstream_batches(self) -> int:
        sdk = anthropic.Anthropic(base_url=self.simulator, api_key="k", max_retries=0)
        with sdk:
            return len(sdk.messages.batches.list(limit=1000).data)


@contextlib.contextmanager
def batch_stack(tmp: Path, batch_seconds: float, **env: str) -> Iterator[BatchStack]:
    """A simulator whose batches take `batch_seconds`, and a gateway with API keys for
    alice and bob that uses it through the anthropic provider."""
    sim_port, gw_port = free_port(), free_port()
    simulator, gateway = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    auth, key = api_key_auth(tmp, "alice")
    other = create_key(tmp / "keys.txt", "bob")
    sim_args = ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0",
                "--batch-seconds", str(batch_seconds)]  # fmt: skip
    log = tmp / "gateway.log"
    with spawn(sim_args, f"{simulator}/healthz", log_path=tmp / "sim.log"):
        gw_args = ["serve", "--port", str(gw_port), "--provider", "anthropic",
                   "--anthropic-base-url", simulator, *auth]  # fmt: skip
        with spawn(gw_args, f"{gateway}/readyz", env={**FAST_GATEWAY_ENV, **env}, log_path=log):
            yield BatchStack(gateway, simulator, key, other, log)


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_bytes(
        b"".join((line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n"
                 for line in lines)
    )  # fmt: skip
    return path


def discounted(usage: dict[str, int]) -> Decimal:
    """A batch request's cost: the price table's, at half."""
    full = (Decimal(usage["input_tokens"]) * Decimal(str(PRICES.input))
            + Decimal(usage["output_tokens"]) * Decimal(str(PRICES.output)))  # fmt: skip
    return (full * Decimal("0.5") / Decimal(10**6)).quantize(Decimal("1e-8"))


async def direct_answers(simulator: str, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The simulator's answer to each request's params, asked at /v1/messages (not a batch)."""
    sdk = anthropic.AsyncAnthropic(base_url=simulator, api_key="k", max_retries=0)
    gate = asyncio.Semaphore(20)

    async def one(cid: str) -> tuple[str, Any]:
        async with gate:
            return cid, (await sdk.messages.create(**params[cid])).model_dump(exclude_unset=True)

    async with sdk:
        return dict(await asyncio.gather(*(one(cid) for cid in params)))


async def usage_of(client: httpx.AsyncClient) -> dict[str, Any]:
    got = await client.get("/api/usage", params={"limit": 1000})
    assert got.status_code == 200, got.text
    return got.json()  # type: ignore[no-any-return]


def counts_line(status: str, processing: int, succeeded: int, errored: int, canceled: int,
                expired: int, cost: Decimal | None = None) -> str:  # fmt: skip
    line = (f"{status}: processing {processing}, succeeded {succeeded}, errored {errored}, "
            f"canceled {canceled}, expired {expired}")  # fmt: skip
    return line + (f", ${cost:.8f}" if cost is not None else "")


async def test_a_batch_of_300_through_the_cli_watched_to_its_end_and_accounted_once(
    tmp_path: Path,
) -> None:
    faulted = set(range(7, 300, 30))  # 10 requests whose upstream answer is a 529
    lines: list[dict[str, Any] | str] = []
    params: dict[str, dict[str, Any]] = {}
    for i in range(300):
        cid = f"q{i:03d}"
        prompt = unique(f"Batch question {i}") + (" [[sim:status=529]]" if i in faulted else "")
        if i % 3 == 0:
            line: dict[str, Any] = {"custom_id": cid, "prompt": prompt}
            asked: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
        elif i % 3 == 1:
            line = {"custom_id": cid, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 40 + i}  # fmt: skip
            asked = {"messages": line["messages"], "max_tokens": 40 + i}
        else:
            line = {"custom_id": cid, "prompt": prompt, "system": f"Be terse, {i}"}
            asked = {"messages": [{"role": "user", "content": prompt}], "system": line["system"]}
        lines.append(line)
        if i == 150:
            lines.append("")  # a blank line is skipped
        params[cid] = {"model": MODEL, "max_tokens": 1024, **asked}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", lines)
    with batch_stack(tmp_path, batch_seconds=6) as stack:
        answers = await direct_answers(
            stack.simulator,
            {cid: p for cid, p in params.items() if int(cid[1:]) not in faulted},
        )
        submitted = stack.cli("submit", str(prompts), "--model", MODEL)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        assert batch_id.startswith("batch_")
        assert submitted.stderr.split() == (
            f"300 requests sent as {batch_id} to deployment default".split()
        )

        watched = stack.cli("status", batch_id, "--watch", "--interval", "0.2")
        assert watched.returncode == 0, watched.stderr
        seen = watched.stdout.splitlines()
        expected_cost = sum(
            (discounted(answers[f"q{i:03d}"]["usage"]) for i in range(300) if i not in faulted),
            Decimal(0),
        )
        assert seen[-1] == counts_line("ended", 0, 290, 10, 0, 0, expected_cost)
        # The counts moved while it was watched: fewer processing at every line.
        assert len(seen) >= 3, seen
        assert all(line.startswith("in_progress: processing ") for line in seen[:-1]), seen
        processing = [int(line.split(",")[0].split()[-1]) for line in seen]
        assert processing == sorted(processing, reverse=True) and len(set(processing)) == len(seen)

        out = tmp_path / "out.jsonl"
        got = stack.cli("results", batch_id, "-o", str(out))
        assert got.returncode == 0, got.stderr
        assert got.stderr.strip() == f"300 results written to {out}"
        results = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert [r["custom_id"] for r in results] == [f"q{i:03d}" for i in range(300)]
        for i, result in enumerate(results):
            cid = result["custom_id"]
            if i in faulted:
                assert result == {"custom_id": cid, "status": "errored", "error": OVERLOADED}
                continue
            message = answers[cid]
            assert set(result) == {"custom_id", "status", "text", "message", "usage", "cost_usd"}
            assert result["status"] == "succeeded"
            assert result["text"] == message["content"][0]["text"]
            assert {k: v for k, v in result["message"].items() if k != "id"} == {
                k: v for k, v in message.items() if k != "id"
            }
            assert result["usage"] == message["usage"]
            assert Decimal(repr(result["cost_usd"])) == discounted(message["usage"])

        async with stack.as_alice() as alice:
            # Read again, several at once: nothing more is recorded.
            again = await asyncio.gather(*(alice.get(f"/api/batches/{batch_id}/results")
                                           for _ in range(3)))  # fmt: skip
            assert {r.content for r in again} == {out.read_bytes()}
            usage = await usage_of(alice)
            status = (await alice.get(f"/api/batches/{batch_id}")).json()
        rows = sorted(usage["rows"], key=lambda r: int(r["stream_id"].rsplit(".", 1)[1]))
        assert len(rows) == 300
        assert usage["totals"] == {
            "streams": 300,
            "input_tokens": sum(answers[c]["usage"]["input_tokens"] for c in answers),
            "output_tokens": sum(answers[c]["usage"]["output_tokens"] for c in answers),
            "cost_usd": float(expected_cost),
        }
        for i, row in enumerate(rows):
            cid = f"q{i:03d}"
            assert (row["stream_id"], row["request_id"]) == (f"{batch_id}.{i}", f"{batch_id}/{cid}")
            assert (row["principal"], row["model"], row["route"]) == ("alice", MODEL, "batch")
            if i in faulted:
                assert (row["status"], row["input_tokens"], row["output_tokens"],
                        row["cost_usd"]) == ("overloaded", 0, 0, 0.0)  # fmt: skip
            else:
                u = answers[cid]["usage"]
                assert (row["status"], row["served_model"], row["stop_reason"]) == (
                    "done",
                    MODEL,
                    answers[cid]["stop_reason"],
                )
                assert (row["input_tokens"], row["output_tokens"]) == (
                    u["input_tokens"],
                    u["output_tokens"],
                )
                assert Decimal(repr(row["cost_usd"])) == discounted(u)
        assert status["cost_usd"] == float(expected_cost)
        assert status["request_counts"] == {"processing": 0, "succeeded": 290, "errored": 10,
                                            "canceled": 0, "expired": 0}  # fmt: skip
        recorded = log_events(stack.log.read_text(), "batch_recorded")
        assert [(e["batch_id"], e["requests"]) for e in recorded] == [(batch_id, "300")]


def small_batch(n: int, faulted: set[int], tag: str) -> bytes:
    lines = []
    for i in range(n):
        prompt = unique(f"{tag} {i}") + (" [[sim:status=529]]" if i in faulted else "")
        lines.append(orjson.dumps({"custom_id": f"{tag}-{i}", "prompt": prompt}))
    return b"\n".join(lines) + b"\n"


JSONL = {"content-type": "application/x-ndjson"}
BATCH_KEYS = {"id", "upstream_id", "deployment", "processing_status", "requests",
              "request_counts", "created_at", "ended_at", "cost_usd"}  # fmt: skip


async def test_a_batch_nobody_reads_is_recorded_by_the_refresher_once_and_is_its_owners_alone(
    tmp_path: Path, database_url: str
) -> None:
    with batch_stack(tmp_path, batch_seconds=4, TOKENRELAY_DATABASE_URL=database_url) as stack:
        async with stack.as_alice() as alice:
            sent = await alice.post("/api/batches", content=small_batch(20, {4, 9}, "own"),
                                    headers=JSONL)  # fmt: skip
            assert sent.status_code == 201, sent.text
            batch = sent.json()
            assert set(batch) == BATCH_KEYS
            assert batch["id"].startswith("batch_")
            assert batch["upstream_id"].startswith("msgbatch_")
            assert (batch["deployment"], batch["processing_status"], batch["requests"]) == (
                "default",
                "in_progress",
                20,
            )
            assert (
                batch["request_counts"]["processing"]
                + batch["request_counts"]["succeeded"]
                + batch["request_counts"]["errored"]
                == 20
            )
            assert (batch["ended_at"], batch["cost_usd"]) == (None, None)
            assert batch["created_at"].endswith("Z")
            bid = batch["id"]

            early = await alice.get(f"/api/batches/{bid}/results")
            message = assert_error(early, 409, "conflict_error")
            assert (
                message == f"Batch {bid} has not ended (in_progress): its results come once it has"
            )

            async with httpx.AsyncClient(base_url=stack.gateway, timeout=30,
                                         headers={"x-api-key": stack.other}) as bob:  # fmt: skip
                for method, path in (("GET", f"/api/batches/{bid}"),
                                     ("GET", f"/api/batches/{bid}/results"),
                                     ("POST", f"/api/batches/{bid}/cancel")):  # fmt: skip
                    refused = await bob.request(method, path)
                    text = assert_error(refused, 404, "not_found_error")
                    assert text == f"No batch {bid!r}: unknown, or not yours"
                assert (await bob.get("/api/batches")).json() == {"data": []}
                mine = (await alice.get("/api/batches")).json()["data"]
                assert [b["id"] for b in mine] == [bid]

                # Nobody looks at it: the gateway's refresher brings its rows in.
                def recorded() -> bool:
                    got = httpx.get(f"{stack.gateway}/api/usage",
                                    headers={"x-api-key": stack.key}).json()  # fmt: skip
                    return bool(got["totals"]["streams"] == 20)

                eventually(recorded, what="the batch's 20 ledger rows", within=30)
                events = log_events(stack.log.read_text(), "batch_recorded")
                assert [e["batch_id"] for e in events] == [bid]

                reads = await asyncio.gather(
                    *(alice.get(f"/api/batches/{bid}/results") for _ in range(4))
                )
                assert {r.status_code for r in reads} == {200}
                assert len({r.content for r in reads}) == 1
                results = [orjson.loads(line) for line in reads[0].content.splitlines()]
                assert [r["custom_id"] for r in results] == [f"own-{i}" for i in range(20)]
                assert [r["status"] for r in results] == [
                    "errored" if i in (4, 9) else "succeeded" for i in range(20)
                ]
                usage = await usage_of(alice)
                assert usage["totals"]["streams"] == 20
                assert sorted(r["stream_id"] for r in usage["rows"]) == sorted(
                    f"{bid}.{i}" for i in range(20)
                )
                cost = sum((discounted(r["usage"]) for r in results if "usage" in r), Decimal(0))
                assert usage["totals"]["cost_usd"] == float(cost)
                ended = (await alice.get(f"/api/batches/{bid}")).json()
                assert ended["cost_usd"] == float(cost)
                assert (await usage_of(bob))["totals"]["streams"] == 0
        assert len(log_events(stack.log.read_text(), "batch_recorded")) == 1


async def test_bad_input_is_refused_with_line_numbers_and_a_batch_can_be_cancelled(
    tmp_path: Path,
) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"custom_id": "a", "prompt": unique("fine")},
        {"custom_id": "a", "prompt": unique("twice")},
        "",
        {"custom_id": "b", "prompt": "x", "model": "claude-nope"},
    ])  # fmt: skip
    with batch_stack(tmp_path, batch_seconds=600) as stack:
        refused = stack.cli("submit", str(bad))
        assert refused.returncode == 2
        assert refused.stdout == ""
        assert refused.stderr.splitlines() == [
            f"{bad}: line 2: custom_id 'a' is used twice (first on line 1)",
            f"{bad}: line 4: Unknown model: claude-nope",
            "tokenrelay: nothing sent: 2 errors",
        ]
        assert stack.upstream_batches() == 0
        async with stack.as_alice() as alice:
            by_http = await alice.post("/api/batches", content=bad.read_bytes(), headers=JSONL)
            assert assert_error(by_http, 400, "invalid_request_error") == (
                "line 2: custom_id 'a' is used twice (first on line 1); "
                "line 4: Unknown model: claude-nope"
            )
            as_json = await alice.post("/api/batches", json={"requests": []})
            assert assert_error(as_json, 400, "invalid_request_error") == (
                "Send the batch as JSONL, one request per line (application/x-ndjson)"
            )
            unknown = await alice.get("/api/batches/batch_nope")
            assert assert_error(unknown, 404, "not_found_error")
            assert stack.upstream_batches() == 0
            assert (await alice.get("/api/batches")).json() == {"data": []}

            prompts = tmp_path / "five.jsonl"
            prompts.write_bytes(small_batch(5, set(), "cancel"))
            submitted = stack.cli("submit", str(prompts), "--model", "claude-sonnet-4-5")
            assert submitted.returncode == 0, submitted.stderr
            bid = submitted.stdout.strip()
            early = stack.cli("results", bid)
            assert early.returncode == 1
            assert early.stderr.strip() == (
                f"tokenrelay: 409 conflict_error: Batch {bid} has not ended (in_progress): "
                "its results come once it has"
            )
            cancelled = stack.cli("cancel", bid)
            assert cancelled.returncode == 0, cancelled.stderr
            # The upstream is canceling a moment, then has ended.
            assert cancelled.stdout.strip() in {
                f"{bid} {counts_line('canceling', 5, 0, 0, 0, 0)}",
                f"{bid} {counts_line('ended', 0, 0, 0, 5, 0, Decimal(0))}",
            }
            watched = stack.cli("status", bid, "--watch", "--interval", "0.1")
            assert watched.returncode == 0, watched.stderr
            assert watched.stdout.splitlines()[-1] == counts_line(
                "ended", 0, 0, 0, 5, 0, Decimal(0)
            )
            results = stack.cli("results", bid)
            assert results.returncode == 0, results.stderr
            assert [orjson.loads(line) for line in results.stdout.splitlines()] == [
                {"custom_id": f"cancel-{i}", "status": "canceled"} for i in range(5)
            ]
            usage = await usage_of(alice)
            assert sorted(
                (r["request_id"], r["model"], r["status"], r["cost_usd"]) for r in usage["rows"]
            ) == [(f"{bid}/cancel-{i}", "claude-sonnet-4-5", "cancelled", 0.0) for i in range(5)]
            again = stack.cli("cancel", bid)  # an ended batch: as it is
            assert (
                again.stdout.strip() == f"{bid} {counts_line('ended', 0, 0, 0, 5, 0, Decimal(0))}"
            )
            listed = stack.cli("list", "--json")
            assert [b["id"] for b in orjson.loads(listed.stdout)] == [bid]
            assert stack.upstream_batches() == 1


def test_batches_need_the_batch_api_and_a_database(tmp_path: Path) -> None:
    line = orjson.dumps({"custom_id": "a", "prompt": unique("Anyone?")})
    for env, message in (
        ({}, "Batches need an upstream with Claude's Batch API"),
        ({"TOKENRELAY_DATABASE_URL": "off"}, "Batches need a database (TOKENRELAY_DATABASE_URL)"),
    ):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with spawn(["serve", "--port", str(port), "--provider", "simulator"], f"{url}/readyz",
                   env=env):  # fmt: skip
            sent = httpx.post(f"{url}/api/batches", content=line, headers=JSONL)
            assert assert_error(sent, 503, "overloaded_error") == message
            if env:
                listed = httpx.get(f"{url}/api/batches")
                assert assert_error(listed, 503, "overloaded_error") == message
            else:
                assert httpx.get(f"{url}/api/batches").json() == {"data": []}
