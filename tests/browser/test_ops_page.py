"""The operations page at `/ops`, in real Chromium, over real gateway and simulator
processes with API keys: an admin sees this instance's streams in flight, the last
minutes' figures and today's costs, live; anyone else is refused; the feed ends when
the instance drains."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page

from tests.support import Stack, run_stack, spawn, unique
from tests.support.auth import create_key
from tests.support.browser import ARTIFACTS, WAIT_MS
from tests.support.clock import not_at_midnight
from tests.support.processes import free_port

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"
# One upstream call at a time per principal, and room to wait: a second stream of the
# same user queues behind the first.
QUEUE_ENV = {
    "TOKENRELAY_MAX_CONCURRENT_PER_PRINCIPAL": "1",
    "TOKENRELAY_QUEUE_SIZE": "4",
    "TOKENRELAY_QUEUE_TIMEOUT": "300",
}
SLOW = "[[sim:tps=4]] [[sim:tokens=400]]"  # runs 100 s: still in flight for the test

# Everything the page shows, read in one go (one task of the page: one snapshot's view).
READ_PAGE = """() => {
    const text = (id) => document.getElementById(id).textContent;
    const rows = (id) => [...document.querySelectorAll(`#${id} tr`)].map((tr) => ({
        key: tr.dataset.streamId || tr.dataset.name,
        state: tr.dataset.state || null,
        cells: [...tr.cells].map((c) => c.textContent),
    }));
    const series = (id) => [...document.querySelectorAll(`#${id} g.series`)].map(
        (g) => g.dataset.values.split(",").map((v) => (v === "" ? null : Number(v))));
    const ids = ["status", "now-streams", "now-queued", "now-readers", "total-started",
        "total-done", "total-errors", "total-stopped", "total-upstream-errors",
        "total-retries", "total-continuations", "ended", "ttft-p50", "ttft-p95",
        "ttft-count", "tps-mean", "tps-count", "cost-total", "cost-streams"];
    return {
        text: Object.fromEntries(ids.map((id) => [id, text(id)])),
        streams: rows("streams"),
        byPrincipal: rows("cost-by-principal"),
        byModel: rows("cost-by-model"),
        charts: { ttft: series("chart-ttft"), tps: series("chart-tps"),
                  errors: series("chart-errors") },
        ledger: document.getElementById("ledger-state").hidden
            ? null : text("ledger-state"),
    };
}"""


@dataclass
class OpsStack:
    stack: Stack
    admin: str
    alice: str
    bob: str


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsStack]:
    tmp = tmp_path_factory.mktemp("ops")
    keys = tmp / "keys.txt"
    admin = create_key(keys, "ops-admin", "--admin")
    alice, bob = create_key(keys, "alice"), create_key(keys, "bob")
    args = ["--auth", "api_key", "--api-keys-file", str(keys)]
    with run_stack(tmp, *args, **QUEUE_ENV) as stack:
        yield OpsStack(stack, admin, alice, bob)


class Watched:
    """A page with what it logged: uncaught errors, CSP violations, console lines."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    async def violations(self) -> list[str]:
        return await self.page.evaluate("() => window.cspViolations")  # type: ignore[no-any-return]

    async def read(self) -> dict[str, Any]:
        return await self.page.evaluate(READ_PAGE)  # type: ignore[no-any-return]

    async def wait_for(self, condition: str, what: str) -> None:
        try:
            await self.page.wait_for_function(condition, timeout=WAIT_MS)
        except Exception as exc:
            raise AssertionError(f"the page never showed {what}: {await self.read()}") from exc


@contextlib.asynccontextmanager
async def ops_page(browser: Browser, base: str) -> AsyncIterator[Watched]:
    context: BrowserContext = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_init_script(
        """window.cspViolations = [];
        document.addEventListener("securitypolicyviolation",
            (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
    )
    try:
        watched = Watched(await context.new_page())
        await watched.page.goto(f"{base}/ops")
        await watched.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        yield watched
        assert watched.errors == []
        assert await watched.violations() == []
        blocked = [line for line in watched.console if "Content Security Policy" in line]
        assert blocked == []
    finally:
        await context.close()


async def use_key(watched: Watched, key: str) -> None:
    await watched.page.fill("#api-key", key)
    await watched.page.press("#api-key", "Enter")


class Background:
    """Streams started and read in the background (their readers stay connected)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, key: str | None, body: dict[str, Any]) -> str:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            headers = {"x-api-key": key} if key else {}
            async with self.client.stream(
                "POST", "/api/stream-response", json=body, headers=headers
            ) as response:
                assert response.status_code == 200, await response.aread()
                ready.set_result(response.headers["x-stream-id"])
                async for _ in response.aiter_raw():
                    pass

        task = asyncio.create_task(read())
        self.tasks.append(task)
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            task.result()  # it failed: say how
        return ready.result()

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def finished(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> str:
    """A stream read to its end; its final event."""
    headers = {"x-api-key": key}
    response = await client.post("/api/stream-response", json=body, headers=headers)
    assert response.status_code == 200, response.text
    last = [line for line in response.text.splitlines() if line.startswith("data: ")][-1]
    return last


def dollars(amount: float) -> str:
    """A ledger amount as the page writes it: 8 places at most, cents at least."""
    text = f"{Decimal(str(amount)).quantize(Decimal('1e-8')):f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents:0<2}"


async def ledger_totals(client: httpx.AsyncClient, admin: str, **query: str) -> dict[str, Any]:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    params = {"from": midnight.isoformat(), **query}
    response = await client.get("/api/usage", params=params, headers={"x-api-key": admin})
    assert response.status_code == 200, response.text
    return response.json()["totals"]  # type: ignore[no-any-return]


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """`eventually` for a condition that must await (an HTTP call)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def cancel(client: httpx.AsyncClient, key: str, stream_id: str) -> Any:
    return client.delete(f"/api/streams/{stream_id}", headers={"x-api-key": key})


async def test_an_admin_sees_streams_in_flight_the_last_minutes_and_todays_costs_live(
    browser: Browser, ops_stack: OpsStack
) -> None:
    s = ops_stack
    not_at_midnight(300)  # today's costs must be today's for the whole test
    async with httpx.AsyncClient(base_url=s.stack.gateway, timeout=60) as client:
        background = Background(client)
        try:
            # Two answers and a failure (529 every time: three attempts, two retries).
            for n in (1, 2):
                body = {"prompt": unique(f"Ops page answer {n} [[sim:tokens=12]]"), "model": HAIKU}
                assert '"done":true' in await finished(client, s.alice, body)
            failing = {"prompt": unique("Ops page failure [[sim:status=529]]"), "model": SONNET}
            assert '"code":"overloaded"' in await finished(client, s.bob, failing)
            # One slow stream of alice's in flight, and her next one queued behind it.
            slow = await background.start(s.alice, {"prompt": unique(f"Ops slow {SLOW}")})
            queued = await background.start(s.alice, {"prompt": unique(f"Ops queued {SLOW}")})

            # The three finished streams are in the ledger (written every 0.5 s).
            async def in_ledger() -> bool:
                return (await ledger_totals(client, s.admin))["streams"] == 3

            await wait_until(in_ledger, "the three finished streams in the ledger")

            async with ops_page(browser, s.stack.gateway) as ops:
                # Without a key: the feed is refused, and the page says so.
                await ops.wait_for(
                    "() => document.getElementById('status').dataset.state === 'forbidden'",
                    "the refusal of a page without a key",
                )
                assert (await ops.read())["text"]["status"] == "no access"
                await use_key(ops, s.admin)
                await ops.wait_for(
                    f"""() => {{
                        const row = (id) => document.querySelector(`tr[data-stream-id="${{id}}"]`);
                        const slow = row("{slow}"), queued = row("{queued}");
                        return slow && slow.dataset.state === "streaming" && queued
                            && document.getElementById("ttft-count").textContent === "3"
                            && document.querySelector("#cost-by-principal tr") !== null;
                    }}""",
                    "the slow stream streaming, the queued one, three first tokens and costs",
                )
                shown = await ops.read()
                text = shown["text"]
                assert text["status"] == "live"
                assert (text["now-streams"], text["now-queued"], text["now-readers"]) == (
                    "2", "1", "2",
                )  # fmt: skip
                rows = {row["key"]: row for row in shown["streams"]}
                assert list(rows) == [slow, queued]  # oldest first
                _, principal, model, state, tokens, readers, _age = rows[slow]["cells"]
                assert (principal, model, state, readers) == ("alice", HAIKU, "streaming", "1")
                assert 0 < int(tokens) < 400
                assert rows[queued]["state"] == "queued"
                assert rows[queued]["cells"][1:6] == ["alice", HAIKU, "queued #1", "0", "1"]
                # The last ten minutes, from the metrics: five streams started (the
                # queued one too), two done, one overloaded after three attempts.
                assert {k: text[k] for k in [
                    "total-started", "total-done", "total-errors", "total-stopped",
                    "total-upstream-errors", "total-retries", "total-continuations",
                    "ended", "ttft-count", "tps-count",
                ]} == {
                    "total-started": "5", "total-done": "2", "total-errors": "1",
                    "total-stopped": "0", "total-upstream-errors": "3", "total-retries": "2",
                    "total-continuations": "0", "ended": "done 2 · overloaded 1",
                    "ttft-count": "3", "tps-count": "2",
                }  # fmt: skip
                for key in ("ttft-p50", "ttft-p95"):
                    assert text[key].endswith(" ms") and int(text[key][:-3]) >= 0, text
                assert float(text["tps-mean"]) > 0, text
                # The charts draw what the totals count: per-minute rates of 30 s steps.
                errors, upstream, retries = shown["charts"]["errors"]
                assert [sum(v or 0 for v in s) / 2 for s in (errors, upstream, retries)] == [
                    1, 3, 2,
                ]  # fmt: skip
                assert any(v is not None for v in shown["charts"]["ttft"][0])
                assert any(v is not None for v in shown["charts"]["tps"][0])

                # Today's costs, as the ledger has them.
                alice_total = await ledger_totals(client, s.admin, user="alice")
                bob_total = await ledger_totals(client, s.admin, user="bob")
                haiku_total = await ledger_totals(client, s.admin, model=HAIKU)
                sonnet_total = await ledger_totals(client, s.admin, model=SONNET)
                everyone = await ledger_totals(client, s.admin)
                assert (alice_total["streams"], bob_total["streams"]) == (2, 1)
                assert alice_total["cost_usd"] > 0 and bob_total["cost_usd"] == 0
                assert [r["cells"] for r in shown["byPrincipal"]] == [
                    ["alice", "2", dollars(alice_total["cost_usd"])],
                    ["bob", "1", dollars(bob_total["cost_usd"])],
                ]
                assert [r["cells"] for r in shown["byModel"]] == [
                    [HAIKU, str(haiku_total["streams"]), dollars(haiku_total["cost_usd"])],
                    [SONNET, str(sonnet_total["streams"]), dollars(sonnet_total["cost_usd"])],
                ]
                assert (text["cost-total"], text["cost-streams"]) == (
                    dollars(everyone["cost_usd"]), "3",
                )  # fmt: skip
                assert shown["ledger"] is None

                # Live: a new stream appears, and the slow one grows, without a reload.
                await ops.page.evaluate("() => { window.sameDocument = true; }")
                live = await background.start(s.bob, {"prompt": unique(f"Ops live {SLOW}")})
                await ops.wait_for(
                    f"""() => document.querySelector(
                        `tr[data-stream-id="{live}"][data-state="streaming"]`) !== null
                        && Number(document.querySelector(
                        `tr[data-stream-id="{slow}"] [data-col=tokens]`).textContent)
                        > {int(tokens)}""",
                    "the new stream streaming and the slow one grown",
                )
                assert await ops.page.evaluate("() => window.sameDocument") is True
                navigations = await ops.page.evaluate(
                    "() => performance.getEntriesByType('navigation').length"
                )
                assert navigations == 1
                now = (await ops.read())["text"]
                assert (now["now-streams"], now["total-started"]) == ("3", "6")
                await ops.page.locator("#api-key").blur()
                ARTIFACTS.mkdir(exist_ok=True)
                await ops.page.screenshot(path=str(ARTIFACTS / "ops.png"), full_page=True)

                # Cancelled (the queued one first, or it would take the freed slot):
                # the table empties, and the page counts three cancelled streams.
                for key, stream_id in ((s.alice, queued), (s.alice, slow), (s.bob, live)):
                    assert (await cancel(client, key, stream_id)).status_code == 200
                await ops.wait_for(
                    "() => !document.getElementById('streams-empty').hidden"
                    " && document.getElementById('total-stopped').textContent === '3'",
                    "an empty table and three cancelled streams",
                )
                after = await ops.read()
                assert after["streams"] == []
                assert after["text"]["ended"] == "cancelled 3 · done 2 · overloaded 1"
                assert after["text"]["now-streams"] == "0"
        finally:
            await background.aclose()


async def test_anyone_but_an_admin_is_refused_by_the_page_and_by_the_feed(
    browser: Browser, ops_stack: OpsStack
) -> None:
    s = ops_stack
    async with httpx.AsyncClient(base_url=s.stack.gateway, timeout=30) as client:
        page = await client.get("/ops")
        chat = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert csp == chat.headers["content-security-policy"] and "script-src 'self'" in csp
        alice = {"x-api-key": s.alice}
        refused = await client.post("/api/ops/tickets", headers=alice)
        assert refused.status_code == 403
        assert refused.json() == {
            "type": "error",
            "error": {
                "type": "permission_error",
                "message": "The operations page needs the admin role",
            },
        }
        assert (await client.get("/api/ops/events", headers=alice)).status_code == 403
        assert (await client.post("/api/ops/tickets")).status_code == 401
        assert (await client.get("/api/ops/events")).status_code == 401
        # A stream ticket, which any user may get, is no ops ticket.
        stream_ticket = (await client.post("/api/tickets", headers=alice)).json()["ticket"]
        response = await client.get("/api/ops/events", params={"ticket": stream_ticket})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        # An admin's ops ticket opens the feed once.
        issued = await client.post("/api/ops/tickets", headers={"x-api-key": s.admin})
        ticket = issued.json()["ticket"]
        async with client.stream("GET", "/api/ops/events", params={"ticket": ticket}) as feed:
            assert feed.status_code == 200
            assert feed.headers["content-type"] == "text/event-stream; charset=utf-8"
            lines = feed.aiter_lines()
            assert await anext(lines) == "event: snapshot"
            snapshot = json.loads((await anext(lines)).removeprefix("data: "))
        assert set(snapshot) == {"instance", "time", "draining", "in_flight", "metrics", "costs"}
        again = await client.get("/api/ops/events", params={"ticket": ticket})
        assert again.status_code == 401

    async with ops_page(browser, s.stack.gateway) as ops:
        await use_key(ops, s.alice)
        await ops.wait_for(
            "() => document.getElementById('status').textContent === 'admin only'",
            "the refusal of a non-admin",
        )
        notice = await ops.page.get_by_test_id("notice").text_content()
        assert notice == "HTTP 403: The operations page needs the admin role"
        assert await ops.page.evaluate("() => document.body.dataset.snapshots") is None


async def test_without_auth_or_ledger_the_page_is_open_and_says_there_are_no_costs(
    browser: Browser, tmp_path: Path
) -> None:
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL="off") as stack:
        async with ops_page(browser, stack.gateway) as ops:
            await ops.wait_for(
                "() => document.getElementById('status').textContent === 'live'"
                " && !document.getElementById('ledger-state').hidden",
                "a live page without costs",
            )
            shown = await ops.read()
            assert shown["ledger"] == (
                "The usage ledger is off (TOKENRELAY_DATABASE_URL=off): this gateway keeps no"
                " costs."
            )
            assert await ops.page.locator("#costs").is_hidden()
            assert await ops.page.locator("#api-key-field").is_hidden()
            assert shown["text"]["now-streams"] == "0" and shown["streams"] == []


async def test_the_feed_shows_the_drain_then_ends_and_the_gateway_exits_cleanly(
    tmp_path: Path,
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--provider", "simulator"]
    # Five seconds to drain: the feed shows the instance draining before it is done.
    env = {"TOKENRELAY_DRAIN_TIMEOUT": "5", "TOKENRELAY_HEARTBEAT_INTERVAL": "0.5"}
    with spawn(args, f"{gateway}/readyz", env=env, log_path=tmp_path / "gw.log") as proc:
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            background = Background(client)
            try:
                stream_id = await background.start(None, {"prompt": unique(f"Drained {SLOW}")})
                snapshots: list[dict[str, Any]] = []
                async with client.stream("GET", "/api/ops/events") as feed:
                    assert feed.status_code == 200
                    async for line in feed.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        snapshots.append(json.loads(line.removeprefix("data: ")))
                        if len(snapshots) == 1:
                            proc.send_signal(signal.SIGTERM)
                # The response ended by itself: the instance drained.
                assert proc.wait(timeout=30) == 0
            finally:
                await background.aclose()
    first, last = snapshots[0], snapshots[-1]
    assert first["in_flight"]["rows"][0]["stream_id"] == stream_id
    assert any(s["draining"] and s["in_flight"]["streams"] == 1 for s in snapshots)
    assert last["draining"] is True and last["in_flight"]["streams"] == 0
