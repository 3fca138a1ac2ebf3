"""Conversations the gateway remembers, over real sockets: turns that round-trip with
the simulator's exact answers, on SQLite and PostgreSQL; a failed answer stored marked
and never sent back; who may see a conversation; the routes without a database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support import Stack, assert_error, read_stream, run_stack, unique
from tests.support.auth import api_key_auth, create_key
from tests.support.streams import Read
from tokenrelay.simulator.engine import Simulator

MODEL = "claude-haiku-4-5"


def answer(messages: list[dict[str, Any]], system: str | None = None) -> str:
    """The simulator's text for this history, asked directly."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "messages": messages}
    if system is not None:
        body["system"] = system
    return "".join(Simulator().plan(body).deltas)


def as_user(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.gateway, timeout=30, headers={"x-api-key": key})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    created = await client.post("/api/conversations", json=body)
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


async def send(client: httpx.AsyncClient, cid: str, content: Any, **fields: Any) -> Read:
    url = f"/api/conversations/{cid}/messages"
    return await read_stream(client, "POST", url, json={"content": content, **fields})


async def turns(client: httpx.AsyncClient, cid: str) -> list[dict[str, Any]]:
    got = await client.get(f"/api/conversations/{cid}")
    assert got.status_code == 200, got.text
    return got.json()["messages"]  # type: ignore[no-any-return]


def brief(messages: list[dict[str, Any]]) -> list[tuple[str, Any, str, str | None]]:
    return [(m["role"], m["content"], m["status"], m["error"]) for m in messages]


async def test_three_turns_round_trip_with_the_exact_answers(
    tmp_path: Path, database_url: str
) -> None:
    system = unique("Answer as a ship's log")
    u1, u2, u3 = unique("Where are we?"), unique("And the weather?"), unique("Heading?")
    a1 = answer([user(u1)], system)
    a2 = answer([user(u1), assistant(a1), user(u2)], system)
    a3 = answer([user(u1), assistant(a1), user(u2), assistant(a2), user(u3)], system)
    assert len({a1, a2, a3}) == 3  # each turn's answer depends on the history it saw
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL=database_url) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            conv = await create(client, title="Voyage", system=system)
            assert conv["id"].startswith("conv_")
            assert (conv["title"], conv["system"], conv["model"]) == ("Voyage", system, MODEL)
            assert conv["created_at"] == conv["updated_at"]
            assert conv["created_at"].endswith("Z")
            reads = [await send(client, conv["id"], u) for u in (u1, u2, u3)]
            assert [r.text for r in reads] == [a1, a2, a3]
            assert [r.events[0].data.keys() for r in reads] == [
                {"stream_id", "request_id", "model"}
            ] * 3
            assert all("done" in r.events[-1].data for r in reads)
            got = (await client.get(f"/api/conversations/{conv['id']}")).json()
            assert got["pending_stream_id"] is None
            assert got["turns"] == 6
            assert brief(got["messages"]) == [
                ("user", u1, "complete", None), ("assistant", a1, "complete", None),
                ("user", u2, "complete", None), ("assistant", a2, "complete", None),
                ("user", u3, "complete", None), ("assistant", a3, "complete", None),
            ]  # fmt: skip
            ids = [r.events[0].stream_id for r in reads]
            assert [m["stream_id"] for m in got["messages"]] == [i for i in ids for _ in "ua"]
            listed = (await client.get("/api/conversations")).json()
            assert listed == {
                "data": [{k: got[k] for k in
                          ("id", "title", "model", "created_at", "updated_at", "turns")}],
                "next": None,
            }  # fmt: skip


async def test_a_failed_answer_is_stored_marked_and_never_sent_back(tmp_path: Path) -> None:
    u1, u3 = unique("Begin"), unique("Go on")
    failing = unique("Fail now")
    bad = f"{failing} [[sim:status=400]]"
    a1 = answer([user(u1)])
    # Without the failed pair: what the model sees is u1, a1, u3; with it (the directive
    # aside, which changes no text) the answer would differ.
    a3 = answer([user(u1), assistant(a1), user(u3)])
    assert a3 != answer([user(u1), assistant(a1), user(failing), assistant("?"), user(u3)])
    with run_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cid = (await create(client))["id"]
            assert (await send(client, cid, u1)).text == a1
            failed = await send(client, cid, bad)
            error = failed.events[-1].data
            assert (error["code"], error["retryable"]) == ("invalid_request", False)
            assert (await send(client, cid, u3)).text == a3
            assert brief(await turns(client, cid)) == [
                ("user", u1, "complete", None), ("assistant", a1, "complete", None),
                ("user", bad, "complete", None), ("assistant", "", "failed", error["error"]),
                ("user", u3, "complete", None), ("assistant", a3, "complete", None),
            ]  # fmt: skip


async def test_a_conversation_is_its_creators_alone(tmp_path: Path) -> None:
    args, alice = api_key_auth(tmp_path, "alice")
    bob = create_key(tmp_path / "keys.txt", "bob")
    with run_stack(tmp_path, *args) as stack:
        async with as_user(stack, alice) as a, as_user(stack, bob) as b:
            cid = (await create(a, title="Mine"))["id"]
            prompt = unique("A secret")
            assert (await send(a, cid, prompt)).text == answer([user(prompt)])
            url = f"/api/conversations/{cid}"
            for response in [
                await b.get(url),
                await b.patch(url, json={"title": "Ours"}),
                await b.delete(url),
                await b.post(f"{url}/messages", json={"content": "Hello"}),
            ]:
                assert_error(response, 404, "not_found_error")
            assert (await b.get("/api/conversations")).json() == {"data": [], "next": None}
            # Untouched by any of that.
            mine = (await a.get(url)).json()
            assert (mine["title"], mine["turns"]) == ("Mine", 2)
            unknown = await a.get("/api/conversations/conv_nothing")
            assert_error(unknown, 404, "not_found_error")
            wrong = await a.get(url, headers={"x-api-key": "wrong"})
            assert_error(wrong, 401, "authentication_error")


async def test_without_a_database_the_routes_say_why(tmp_path: Path) -> None:
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL="off") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            for response in [
                await client.post("/api/conversations", json={}),
                await client.get("/api/conversations"),
                await client.get("/api/conversations/conv_x"),
            ]:
                message = assert_error(response, 503, "overloaded_error")
                assert message == "Conversations need a database (TOKENRELAY_DATABASE_URL)"
