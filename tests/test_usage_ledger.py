"""The usage ledger in a real database, SQLite and PostgreSQL: one row per stream with
its exact usage, whatever the ending; no row lost to a database outage nor to a
SIGTERM, none written twice; `GET /api/usage` for a user and for an admin."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import ROOT, Stack, eventually_async, log_events, read_stream, run_stack
from tests.support.services import postgres_server
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import Usage
from tokenrelay.simulator.engine import Simulator

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"
RETRIES = 2  # FAST_GATEWAY_ENV's TOKENRELAY_UPSTREAM_RETRIES


async def db_rows(url: str) -> list[dict[str, Any]]:
    """Every row of `stream_usage`, read with plain SQL (not the gateway's queries)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT * FROM stream_usage ORDER BY id"))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


def body(prompt: str, model: str = HAIKU, max_tokens: int = 1000) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens}  # fmt: skip


def cost(model: str, input_tokens: int, output_tokens: int) -> float:
    return ModelTable().cost_usd(model, Usage(input_tokens, output_tokens))


async def stream(client: httpx.AsyncClient, prompt: str, model: str = HAIKU) -> str:
    """Run one stream to its end; its id."""
    request = {"prompt": prompt, "model": model, "max_tokens": 1000}
    read = await read_stream(client, "POST", "/api/stream-response", json=request)
    return str(read.events[0].data["stream_id"])


async def cancelled_stream(client: httpx.AsyncClient, prompt: str) -> tuple[str, int]:
    """A stream cancelled after a few tokens: its id and the tokens its log holds."""
    first = await read_stream(client, "POST", "/api/stream-response", stop_after=5,
                              json={"prompt": prompt, "max_tokens": 1000})  # fmt: skip
    sid = first.events[0].data["stream_id"]
    assert (await client.delete(f"/api/streams/{sid}")).json()["cancelled"] is True
    replay = await read_stream(client, "GET", f"/api/streams/{sid}?after=-1")
    assert replay.events[-1].data["code"] == "cancelled"
    return sid, sum("token" in e.data for e in replay.events)


async def test_every_stream_leaves_one_row_with_its_exact_usage(
    tmp_path: Path, database_url: str
) -> None:
    done_1 = "Ledger done [[sim:tokens=12]]"
    done_2 = "Ledger done too [[sim:tokens=7]]"
    long = "Ledger cancel [[sim:tokens=400]] [[sim:tps=50]]"
    failed = "Ledger fail [[sim:status=529]]"
    cut = "Ledger cut [[sim:tokens=20]] [[sim:error_after=6]] [[sim:fail_times=1]]"
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL=database_url) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            ids = {
                "done_1": await stream(client, done_1),
                "done_2": await stream(client, done_2, SONNET),
                "failed": await stream(client, failed),
                "cut": await stream(client, cut),
            }
            ids["cancelled"], cancelled_tokens = await cancelled_stream(client, long)

            async def all_recorded() -> bool:
                usage = (await client.get("/api/usage")).json()
                return bool(usage["totals"]["streams"] == len(ids))

            await until(all_recorded, what="a ledger row per stream")
            api = (await client.get("/api/usage")).json()
    rows = {r["stream_id"]: r for r in await db_rows(database_url)}
    assert sorted(rows) == sorted(ids.values())

    sim = Simulator()
    plan_1, plan_2 = sim.plan(body(done_1)), sim.plan(body(done_2, SONNET))
    plan_long = sim.plan(body(long))
    plan_cut = Simulator().plan(body(cut))
    prefill = "".join(plan_cut.deltas[:6]).rstrip()
    resumed = Simulator().plan(
        {**body(cut), "messages": [*body(cut)["messages"],
                                   {"role": "assistant", "content": prefill}]}
    )  # fmt: skip
    cut_in, cut_out = plan_cut.input_tokens + resumed.input_tokens, 6 + len(resumed.deltas)
    expected = {
        # status, stop_reason, input, output, cost, estimated, retries, continuations
        "done_1": ("done", "end_turn", plan_1.input_tokens, 12,
                   cost(HAIKU, plan_1.input_tokens, 12), False, 0, 0),
        "done_2": ("done", "end_turn", plan_2.input_tokens, 7,
                   cost(SONNET, plan_2.input_tokens, 7), False, 0, 0),
        "failed": ("overloaded", None, 0, 0, 0.0, False, RETRIES, 0),
        "cut": ("done", "end_turn", cut_in, cut_out, cost(HAIKU, cut_in, cut_out), True, 0, 1),
        "cancelled": ("cancelled", None, plan_long.input_tokens, cancelled_tokens,
                      cost(HAIKU, plan_long.input_tokens, cancelled_tokens), True, 0, 0),
    }  # fmt: skip
    fields = ("status", "stop_reason", "input_tokens", "output_tokens", "cost_usd",
              "estimated", "retries", "continuations")  # fmt: skip
    for name, sid in ids.items():
        row = rows[sid]
        got = tuple(float(row[f]) if f == "cost_usd" else row[f] for f in fields)
        assert got == expected[name], name
        assert (row["principal"], row["cached"], row["coalesced"]) == ("anonymous", False, 0)
        assert row["started_at"] <= row["finished_at"]
    assert 4 <= cancelled_tokens < 400  # 5 events read: the start and 4 tokens
    assert (rows[ids["done_2"]]["model"], rows[ids["done_2"]]["served_model"]) == (SONNET,) * 2
    assert api["totals"] == {
        "streams": 5,
        "input_tokens": sum(e[2] for e in expected.values()),
        "output_tokens": sum(e[3] for e in expected.values()),
        "cost_usd": exact_sum(e[4] for e in expected.values()),
    }


def exact_sum(costs: Any) -> float:
    from decimal import Decimal

    return float(sum((Decimal(repr(c)) for c in costs), Decimal(0)))


async def until(condition: Callable[[], Awaitable[bool]], *, what: str) -> None:
    """Poll an async condition until it holds; fail naming `what` past the deadline."""
    deadline = time.monotonic() + 30
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_database_outage_loses_no_row_and_writes_none_twice(tmp_path: Path) -> None:
    with postgres_server() as pg:
        url = pg.create_database("outage")
        with run_stack(tmp_path, TOKENRELAY_DATABASE_URL=url) as stack:
            async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
                before = [await stream(client, f"Before the outage {i}") for i in range(3)]
                await until(lambda: _count(client, 3), what="the rows from before the outage")
                pg.stop()
                # Streams keep streaming while the database is down.
                during = [await stream(client, f"During the outage {i}") for i in range(4)]
                down = await client.get("/api/usage")
                assert down.status_code == 503
                assert down.headers["retry-after"] == "5"
                assert down.json()["error"]["type"] == "overloaded_error"
                await eventually_async(
                    lambda: log_events(stack.log_text(), "ledger_backlog"),
                    what="a failed ledger write",
                )
                pg.start()
                await until(lambda: _count(client, 7), what="every row once the database is back")
                after = await stream(client, "After the outage")
                await until(lambda: _count(client, 8), what="the row after")
        recovered = log_events(stack.log_text(), "ledger_recovered")
        assert recovered and int(recovered[0]["rows"]) >= 0
        rows = await db_rows(url)
    assert sorted(r["stream_id"] for r in rows) == sorted([*before, *during, after])
    assert {r["status"] for r in rows} == {"done"}


async def _count(client: httpx.AsyncClient, n: int) -> bool:
    answer = await client.get("/api/usage")
    return answer.status_code == 200 and answer.json()["totals"]["streams"] == n


async def test_sigterm_writes_the_rows_still_buffered(tmp_path: Path, database_url: str) -> None:
    # A flush interval no test outlives: only the flush at shutdown can write the rows.
    env = {"TOKENRELAY_DATABASE_URL": database_url, "TOKENRELAY_LEDGER_FLUSH_INTERVAL": "3600"}
    with run_stack(tmp_path, **env) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            ids = [await stream(client, f"Buffered {i} [[sim:tokens=9]]") for i in range(3)]
            assert (await client.get("/api/usage")).json()["totals"]["streams"] == 0
    # run_stack ended the gateway with SIGTERM and checked it exited 0.
    rows = await db_rows(database_url)
    assert sorted(r["stream_id"] for r in rows) == sorted(ids)
    assert {r["output_tokens"] for r in rows} == {9}


# --- GET /api/usage ---------------------------------------------------------------


def create_key(keys_file: Path, user: str, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "keys", "create", "--user", user, *extra],
        cwd=ROOT, env={"TOKENRELAY_API_KEYS_FILE": str(keys_file), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Stack, dict[str, dict[str, str]]]]:
    keys_file = tmp_path / "keys.txt"
    keys = {
        "alice": create_key(keys_file, "alice"),
        "bob": create_key(keys_file, "bob"),
        "root": create_key(keys_file, "root", "--admin"),
    }
    assert keys_file.read_text().splitlines()[2].endswith(" root admin")
    args = ("--auth", "api_key", "--api-keys-file", str(keys_file))
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    with run_stack(tmp_path, *args, TOKENRELAY_DATABASE_URL=url) as stack:
        yield stack, {user: {"x-api-key": key} for user, key in keys.items()}


async def test_usage_api_shows_own_usage_and_an_admin_everyones(
    keyed: tuple[Stack, dict[str, dict[str, str]]],
) -> None:
    stack, headers = keyed
    sim = Simulator()
    prompts = {"alice": ["Alice one [[sim:tokens=5]]", "Alice two [[sim:tokens=8]]"],
               "bob": ["Bob one [[sim:tokens=11]]"]}  # fmt: skip
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        ids: dict[str, list[str]] = {}
        for user, texts in prompts.items():
            async with httpx.AsyncClient(
                base_url=stack.gateway, timeout=30, headers=headers[user]
            ) as own:
                ids[user] = [await stream(own, p) for p in texts]
        sonnet_read = await read_stream(
            client, "POST", "/api/stream-response", headers=headers["alice"],
            json={"prompt": "Alice sonnet [[sim:tokens=4]]", "model": SONNET},
        )  # fmt: skip
        ids["alice"].append(sonnet_read.events[0].data["stream_id"])
        prompts["alice"].append("Alice sonnet [[sim:tokens=4]]")

        async def get(who: str, **params: Any) -> httpx.Response:
            return await client.get("/api/usage", params=params, headers=headers[who])

        async def recorded() -> bool:
            return bool((await get("root")).json()["totals"]["streams"] == 4)

        await until(recorded, what="four ledger rows")

        def totals(user: str, only_model: str | None = None) -> dict[str, Any]:
            picked = [(p, SONNET if "sonnet" in p else HAIKU) for p in prompts[user]]
            picked = [(p, m) for p, m in picked if only_model in (None, m)]
            plans = [(sim.plan(body(p, m)), m) for p, m in picked]
            return {
                "streams": len(plans),
                "input_tokens": sum(p.input_tokens for p, _ in plans),
                "output_tokens": sum(len(p.deltas) for p, _ in plans),
                "cost_usd": exact_sum(cost(m, p.input_tokens, len(p.deltas)) for p, m in plans),
            }

        own = (await get("alice")).json()
        assert own["totals"] == totals("alice")
        assert sorted(r["stream_id"] for r in own["rows"]) == sorted(ids["alice"])
        assert {r["principal"] for r in own["rows"]} == {"alice"}
        assert (await get("alice", user="alice")).json() == own
        assert (await get("alice", model=SONNET)).json()["totals"] == totals("alice", SONNET)

        everyone = (await get("root")).json()
        assert sorted(r["stream_id"] for r in everyone["rows"]) == sorted(ids["alice"] + ids["bob"])
        assert (await get("root", user="bob")).json()["totals"] == totals("bob")
        assert (await get("root", limit=1)).json()["totals"]["streams"] == 4
        assert len((await get("root", limit=1)).json()["rows"]) == 1
        assert (await get("root", **{"from": "2999-01-01"})).json()["totals"]["streams"] == 0
        newest = everyone["rows"][0]["started_at"]
        assert len((await get("root", **{"from": newest})).json()["rows"]) == 1
        assert len((await get("root", to=newest)).json()["rows"]) == 3

        denied = await get("alice", user="bob")
        assert denied.status_code == 403
        message = "Only an admin may see another user's usage"
        assert denied.json() == {
            "type": "error",
            "error": {"type": "permission_error", "message": message},
        }
        for params in ({"from": "yesterday"}, {"to": "2026-13-01"}, {"limit": "0"},
                       {"limit": "x"}, {"from": "2026-12-02", "to": "2026-12-01"}):  # fmt: skip
            bad = await get("alice", **params)
            assert bad.status_code == 400, params
            assert bad.json()["error"]["type"] == "invalid_request_error"
        anonymous = await client.get("/api/usage")
        assert anonymous.status_code == 401


def test_usage_is_in_the_openapi_document(tmp_path: Path) -> None:
    with run_stack(tmp_path) as stack:
        doc = httpx.get(f"{stack.gateway}/openapi.json").json()
    operation = doc["paths"]["/api/usage"]["get"]
    assert sorted(operation["responses"]) == ["200", "400", "401", "403", "404", "503"]
    assert [p["name"] for p in operation["parameters"]] == ["from", "to", "model", "user", "limit"]
    assert "retry-after" in {h.lower() for h in operation["responses"]["503"]["headers"]}
