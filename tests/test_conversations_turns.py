"""How a conversation's answers end, and what the next turn sends: a cancelled and a
budget-cut answer stored marked, a stream resumed by its id from the conversation, two
sends at once (exactly one 409, on SQLite and PostgreSQL), a pending answer whose
instance died (lost), history trimmed to fit each limit exactly; the list's pages,
rename, delete and bad input."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    assert_error,
    free_port,
    read_stream,
    resume,
    run_stack,
    spawn,
    unique,
)
from tests.support.clock import not_at_midnight
from tests.support.streams import Read
from tokenrelay.admission.budgets import dollars
from tokenrelay.simulator.engine import Simulator

MODEL = "claude-haiku-4-5"


def plan(messages: list[dict[str, Any]]) -> tuple[int, list[str]]:
    body = {"model": MODEL, "max_tokens": 1024, "messages": messages}
    p = Simulator().plan(body)
    return p.input_tokens, p.deltas


def answer(messages: list[dict[str, Any]]) -> str:
    return "".join(plan(messages)[1])


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def create(client: httpx.AsyncClient, **body: Any) -> str:
    created = await client.post("/api/conversations", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def send(client: httpx.AsyncClient, cid: str, content: Any, **kwargs: Any) -> Read:
    url = f"/api/conversations/{cid}/messages"
    return await read_stream(client, "POST", url, json={"content": content}, **kwargs)


async def conversation(client: httpx.AsyncClient, cid: str) -> dict[str, Any]:
    got = await client.get(f"/api/conversations/{cid}")
    assert got.status_code == 200, got.text
    return got.json()  # type: ignore[no-any-return]


def last_answer(conv: dict[str, Any]) -> tuple[Any, str, str | None]:
    m = conv["messages"][-1]
    assert m["role"] == "assistant"
    return m["content"], m["status"], m["error"]


async def test_a_cancelled_answer_is_kept_as_shown_and_not_sent_back(tmp_path: Path) -> None:
    slow = unique("Tell it slowly [[sim:tokens=60]] [[sim:tps=10]]")
    after = unique("Something else")
    with run_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            first = await send(client, cid, slow, stop_after=4)  # start and 3 tokens
            sid = first.events[0].stream_id
            assert (await conversation(client, cid))["pending_stream_id"] == sid
            cancelled = await client.delete(f"/api/streams/{sid}")
            assert cancelled.json() == {"stream_id": sid, "cancelled": True}
            rest = await resume(client, first.last_id)
            shown = first.text + rest.text
            assert rest.events[-1].data["code"] == "cancelled"
            conv = await conversation(client, cid)
            assert conv["pending_stream_id"] is None
            assert last_answer(conv) == (shown, "cancelled", "Stream cancelled")
            assert answer([user(slow)]).startswith(shown) and shown != answer([user(slow)])
            # Neither the cancelled answer nor the question it answered goes back.
            assert (await send(client, cid, after)).text == answer([user(after)])


async def test_a_budget_cut_answer_is_stored_marked_and_the_next_send_is_refused(
    tmp_path: Path,
) -> None:
    not_at_midnight()
    prompt = unique("Spend it [[sim:tokens=60]] [[sim:tps=200]]")
    input_tokens, deltas = plan([user(prompt)])
    affordable = 20  # claude-haiku-4-5: 1 and 5 micro-dollars a token in and out
    budget = dollars((input_tokens * 1 + affordable * 5) / 1e6)
    with run_stack(tmp_path, TOKENRELAY_BUDGET_DAILY_USD=budget) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            cut = await send(client, cid, prompt)
            assert cut.text == "".join(deltas[:affordable])
            message = f"Budget exceeded: the daily budget of ${budget} is spent"
            assert last_answer(await conversation(client, cid)) == (
                cut.text, "budget_exceeded", message
            )  # fmt: skip
            refused = await client.post(
                f"/api/conversations/{cid}/messages", json={"content": unique("More")}
            )
            assert assert_error(refused, 429, "rate_limit_error") == message
            # Refused before its stream started: nothing stored, nothing left pending.
            conv = await conversation(client, cid)
            assert (conv["turns"], conv["pending_stream_id"]) == (2, None)


async def test_a_conversations_answer_resumes_by_its_stream_id(tmp_path: Path) -> None:
    prompt = unique("A long one [[sim:tokens=40]] [[sim:tps=40]]")
    with run_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            part = await send(client, cid, prompt, stop_after=5)  # then the client hangs up
            pending = (await conversation(client, cid))["pending_stream_id"]
            assert pending == part.events[0].stream_id
            rest = await read_stream(
                client, "GET", f"/api/streams/{pending}", headers={"Last-Event-ID": part.last_id}
            )
            assert part.text + rest.text == answer([user(prompt)])
            assert rest.events[0].seq == part.events[-1].seq + 1
            conv = await conversation(client, cid)
            assert conv["pending_stream_id"] is None
            assert last_answer(conv) == (answer([user(prompt)]), "complete", None)


async def status_of_send(client: httpx.AsyncClient, cid: str, content: str) -> int:
    try:
        await send(client, cid, content)
    except httpx.HTTPStatusError as exc:
        assert_error(exc.response, 409, "conflict_error")
        assert exc.response.json()["error"]["message"] == (
            "A reply is still being generated in this conversation"
        )
        return 409
    return 200


async def test_of_two_sends_at_once_exactly_one_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    first = unique("One [[sim:tokens=20]] [[sim:tps=20]]")
    second = unique("Two [[sim:tokens=20]] [[sim:tps=20]]")
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL=database_url) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            statuses = await asyncio.gather(
                status_of_send(client, cid, first), status_of_send(client, cid, second)
            )
            assert sorted(statuses) == [200, 409]
            conv = await conversation(client, cid)
            sent = first if statuses[0] == 200 else second
            assert [(m["content"], m["status"]) for m in conv["messages"]] == [
                (sent, "complete"), (answer([user(sent)]), "complete"),
            ]  # fmt: skip


async def test_an_answer_whose_instance_died_is_marked_lost(tmp_path: Path) -> None:
    db = {"TOKENRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/conv.db"}
    prompt = unique("Never finished [[sim:tokens=100]] [[sim:tps=5]]")

    def gateway() -> tuple[list[str], str]:
        port = free_port()
        return ["serve", "--port", str(port), "--provider", "simulator"], f"http://127.0.0.1:{port}"

    args, url = gateway()
    with spawn(args, f"{url}/readyz", env=db) as proc:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            cid = await create(client)
            part = await send(client, cid, prompt, stop_after=2)
            proc.send_signal(signal.SIGKILL)  # its memory store, and the stream, die with it
            proc.wait()
    args, url = gateway()
    with spawn(args, f"{url}/readyz", env=db):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            conv = await conversation(client, cid)
            assert conv["pending_stream_id"] is None
            assert last_answer(conv) == (
                "", "failed", "Stream lost: it ended with its gateway instance, or its log expired"
            )  # fmt: skip
            assert conv["messages"][-1]["stream_id"] == part.events[0].stream_id
            # The conversation goes on, without the lost pair.
            again = unique("Once more")
            assert (await send(client, cid, again)).text == answer([user(again)])


# History trimming: three turns; each limit is set to fit exactly the second and third
# pairs' user turn, answer and the new turn, so the third send drops the first pair.
U1 = "Hi"
U2 = "Tell me more"
U3 = "And a long question, long enough to outweigh the first exchange: " + "why? " * 30


@pytest.mark.parametrize("limit", ["max_input_tokens", "max_prompt_chars", "max_messages"])
async def test_history_is_trimmed_from_the_oldest_pair_to_fit(tmp_path: Path, limit: str) -> None:
    u1, u2, u3 = unique(U1), unique(U2), unique(U3)
    a1 = answer([user(u1)])
    a2 = answer([user(u1), assistant(a1), user(u2)])
    kept = len(u2) + len(a2) + len(u3)
    assert len(u1) + len(a1) + len(u2) <= kept  # the second send is not trimmed
    env = {
        "max_input_tokens": {"TOKENRELAY_CONVERSATION_MAX_INPUT_TOKENS": str(kept // 4 + 1)},
        "max_prompt_chars": {"TOKENRELAY_MAX_PROMPT_CHARS": str(kept)},
        "max_messages": {"TOKENRELAY_MAX_MESSAGES": "3"},
    }[limit]
    if limit == "max_input_tokens":  # with the first pair, the estimate is over
        assert (kept + len(u1) + len(a1)) // 4 + 1 > kept // 4 + 1
    with run_stack(tmp_path, **env) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            assert (await send(client, cid, u1)).text == a1
            assert (await send(client, cid, u2)).text == a2
            third = await send(client, cid, u3)
            assert third.text == answer([user(u2), assistant(a2), user(u3)])
            assert third.text != answer([user(u1), assistant(a1), user(u2), assistant(a2),
                                         user(u3)])  # fmt: skip
            # Every turn is still kept and shown: trimming is only of what is sent.
            assert (await conversation(client, cid))["turns"] == 6


async def test_the_list_pages_newest_first_and_renames_and_deletes(tmp_path: Path) -> None:
    with run_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            ids = [await create(client, title=f"c{i}") for i in range(3)]
            renamed = await client.patch(f"/api/conversations/{ids[0]}", json={"title": "top"})
            assert renamed.status_code == 200 and renamed.json()["title"] == "top"
            page = (await client.get("/api/conversations", params={"limit": 2})).json()
            assert [c["id"] for c in page["data"]] == [ids[0], ids[2]]
            assert page["next"] is not None
            params = {"limit": 2, "before": page["next"]}
            more = (await client.get("/api/conversations", params=params)).json()
            assert (more["next"], [c["id"] for c in more["data"]]) == (None, [ids[1]])
            gone = await client.delete(f"/api/conversations/{ids[2]}")
            assert (gone.status_code, gone.content) == (204, b"")
            for method in ("GET", "DELETE"):
                again = await client.request(method, f"/api/conversations/{ids[2]}")
                assert_error(again, 404, "not_found_error")
            left = (await client.get("/api/conversations")).json()["data"]
            assert [c["id"] for c in left] == [ids[0], ids[1]]


async def test_bad_input_is_a_400(tmp_path: Path) -> None:
    with run_stack(tmp_path, TOKENRELAY_MAX_PROMPT_CHARS="50") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = await create(client)
            cases: list[tuple[str, str, Any, str]] = [
                ("POST", "/api/conversations", {"title": "x" * 201},
                 "Invalid title: String should have at most 200 characters"),
                ("POST", "/api/conversations", {"model": "claude-nothing"},
                 "Unknown model: claude-nothing"),
                ("POST", "/api/conversations", {"colour": "red"}, "Unknown field: colour"),
                ("PATCH", f"/api/conversations/{cid}", {}, "Invalid title: Field required"),
                ("POST", f"/api/conversations/{cid}/messages", {},
                 "Invalid content: Field required"),
                ("POST", f"/api/conversations/{cid}/messages", {"content": " "},
                 "A user message must not be empty"),
                ("POST", f"/api/conversations/{cid}/messages", {"content": "y" * 51},
                 "Prompt is too long: 51 characters, the limit is 50"),
                ("POST", f"/api/conversations/{cid}/messages", {"content": "Hi", "model": MODEL},
                 "Unknown field: model"),
            ]  # fmt: skip
            for method, url, body, message in cases:
                response = await client.request(method, url, json=body)
                assert assert_error(response, 400, "invalid_request_error") == message, url
            for params in ({"limit": 0}, {"limit": 101}, {"before": "nonsense"}):
                listed = await client.get("/api/conversations", params=params)
                assert_error(listed, 400, "invalid_request_error")
            # None of the refused sends left the conversation pending.
            hello = unique("Hello")
            assert (await send(client, cid, hello)).text == answer([user(hello)])
