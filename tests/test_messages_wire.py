"""`POST /v1/messages` on the wire, read with httpx: what the gateway sends is what
Claude sends, byte for byte (ids aside) — a hand-written stream with every event
type replayed by the simulator, and the simulator's own streams; it resumes from any
event's id; a drop is healed into one message; what cannot be healed, or is
cancelled, ends with an `error` event and never with `message_stop`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ROOT, Stack, direct_text, run_stack, unique
from tests.support.claude_wire import MODEL, Frame, body, frames, post, text_of, without_ids

FIXTURE = ROOT / "tests" / "fixtures" / "replays" / "every-event.sse"
LOOKUP = {"name": "lookup", "input_schema": {"type": "object"}}
THINKING = {"type": "enabled", "budget_tokens": 1024}
NO_PREFILL = "claude-sonnet-4-6"  # takes no prefill: an answer it broke could only start again


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("messages-wire")) as running:
        yield running


def types(read: list[Frame]) -> list[str]:
    return [f.type for f in read]


def test_a_hand_written_claude_stream_passes_through_byte_for_byte(stack: Stack) -> None:
    response = post(stack.gateway, body(unique("Weather? [[sim:replay=every-event]]")))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert without_ids(response.content) == without_ids(FIXTURE.read_bytes())
    # The message id names the stream.
    sid = response.headers["x-stream-id"]
    assert frames(response.content)[0].data["message"]["id"] == f"msg_{sid}"


@pytest.mark.parametrize(
    ("prompt", "params"),
    [
        ("Plain text [[sim:tokens=9]]", {}),
        ("A tool call [[sim:tool=lookup]]", {"tools": [LOOKUP]}),
        ("Think first [[sim:tokens=4]]", {"thinking": THINKING, "max_tokens": 2048}),
        ("Capped [[sim:tokens=30]]", {"max_tokens": 6}),
    ],
    ids=["text", "tool_use", "thinking", "max_tokens"],
)
def test_the_simulators_own_streams_pass_through_byte_for_byte(
    stack: Stack, prompt: str, params: dict[str, object]
) -> None:
    ask = body(unique(prompt), **params)
    direct = post(stack.simulator, ask)
    through = post(stack.gateway, ask)
    assert direct.status_code == through.status_code == 200
    assert without_ids(through.content) == without_ids(direct.content)


def test_every_entry_carries_an_id_and_a_resume_after_it_sends_exactly_the_rest(
    stack: Stack,
) -> None:
    whole = post(stack.gateway, body(unique("Resume me [[sim:tokens=12]]")))
    sid = whole.headers["x-stream-id"]
    read = frames(whole.content)
    ids = [f.id for f in read if f.id is not None]
    assert ids == [f"{sid}:{seq}" for seq in range(1, 14)]  # 12 texts, then the end
    cut = next(i for i, f in enumerate(read) if f.id == f"{sid}:5")
    for headers, query in [({"last-event-id": f"{sid}:5"}, ""), ({}, "?after=5")]:
        tail = httpx.get(f"{stack.gateway}/v1/streams/{sid}{query}", headers=headers)
        assert tail.status_code == 200
        assert tail.headers["x-stream-id"] == sid
        assert frames(tail.content) == read[cut + 1 :]
    again = httpx.get(f"{stack.gateway}/v1/streams/{sid}")
    assert again.content == whole.content  # from the start, the same bytes


async def test_a_client_that_hangs_up_mid_stream_resumes_where_it_was(stack: Stack) -> None:
    prompt = unique("A slow one [[sim:tokens=20]] [[sim:tps=40]]")
    seen: list[Frame] = []
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        async with client.stream("POST", "/v1/messages", json=body(prompt)) as response:
            sid = response.headers["x-stream-id"]
            buffer = b""
            async for chunk in response.aiter_bytes():
                buffer += chunk
                complete, _, buffer = buffer.rpartition(b"\n\n")
                seen += frames(complete + b"\n\n") if complete else []
                if sum(f.type == "content_block_delta" for f in seen) >= 5:
                    break  # hang up
        last = [f.id for f in seen if f.id is not None][-1]
        rest = await client.get(f"/v1/streams/{sid}", headers={"last-event-id": last})
    read = seen + frames(rest.content)
    assert types(read).count("message_start") == 1
    assert types(read)[-2:] == ["message_delta", "message_stop"]
    assert text_of(read) == await direct_text(stack.simulator, prompt)


async def test_a_drop_mid_stream_is_healed_into_one_message_with_the_summed_usage(
    stack: Stack,
) -> None:
    prompt = unique("Heal me [[sim:tokens=12]]")
    cut = post(stack.gateway, body(prompt + " [[sim:drop_after=4]] [[sim:fail_times=1]]"))
    read = frames(cut.content)
    assert text_of(read) == await direct_text(stack.simulator, prompt)
    assert types(read) == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 12,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    first_call = read[0].data["message"]["usage"]["input_tokens"]
    # 4 deltas, then the continuation's 8; the prompt was billed twice.
    assert read[-2].data["usage"] == {"input_tokens": 2 * first_call, "output_tokens": 12}


def test_an_answer_that_would_restart_ends_with_an_overloaded_error(stack: Stack) -> None:
    before = stack.sim_stats()["requests"]
    cut = post(stack.gateway, body(unique("No prefill [[sim:drop_after=3]]"), model=NO_PREFILL))
    read = frames(cut.content)
    assert types(read) == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 3, "error",
    ]  # fmt: skip
    assert read[-1].data["error"]["type"] == "overloaded_error"
    assert stack.sim_stats()["requests"] == before + 1  # and it did not start again
    sid = cut.headers["x-stream-id"]
    assert read[-1].id == f"{sid}:4"  # the stream's end: nothing follows it
    assert httpx.get(f"{stack.gateway}/v1/streams/{sid}?after=4").content == b""


def test_without_streaming_an_answer_that_restarts_is_whole(stack: Stack) -> None:
    prompt = unique("Whole despite it [[sim:tokens=8]]")
    faults = " [[sim:drop_after=3]] [[sim:fail_times=1]]"
    response = post(stack.gateway, body(prompt + faults, stream=False, model=NO_PREFILL))
    assert response.status_code == 200
    message = response.json()
    assert [b["type"] for b in message["content"]] == ["text"]
    assert message["stop_reason"] == "end_turn"
    whole = post(stack.simulator, body(prompt, stream=False, model=NO_PREFILL)).json()
    assert message["content"][0]["text"] == whole["content"][0]["text"]


async def test_a_cancelled_stream_ends_with_an_error_event_not_message_stop(stack: Stack) -> None:
    prompt = unique("Cancel me [[sim:tokens=200]] [[sim:tps=20]]")
    async with (
        httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=body(prompt)) as response,
    ):
        sid = response.headers["x-stream-id"]
        raw = b""
        cancelled = None
        async for chunk in response.aiter_bytes():
            raw += chunk
            if cancelled is None and b"content_block_delta" in raw:
                cancelled = await client.delete(f"/api/streams/{sid}")
    assert cancelled is not None and cancelled.json() == {"stream_id": sid, "cancelled": True}
    read = frames(raw)
    assert "message_stop" not in types(read) and "message_delta" not in types(read)
    assert read[-1].type == "error"
    assert read[-1].data["error"] == {
        "details": None, "type": "conflict_error", "message": "Stream cancelled",
    }  # fmt: skip
    assert 1 <= types(read).count("content_block_delta") < 200


@pytest.mark.parametrize("stream", [True, False])
def test_a_stream_that_fails_before_its_answer_is_the_http_error_claude_would_send(
    stack: Stack, stream: bool
) -> None:
    before = stack.sim_stats()["requests"]
    response = post(stack.gateway, body(unique("Overloaded [[sim:status=529]]"), stream=stream))
    assert response.status_code == 529
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Simulated overloaded_error"},
    }
    assert response.headers["x-should-retry"] == "false"  # the gateway retried already
    assert response.headers["x-stream-id"]
    assert stack.sim_stats()["requests"] == before + 3  # its first call and two retries


async def test_a_queue_wait_is_spent_before_the_response_starts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {"TOKENRELAY_MAX_CONCURRENT": "1", "TOKENRELAY_QUEUE_SIZE": "2"}
    with run_stack(tmp_path_factory.mktemp("messages-queue"), **env) as queued:
        async with httpx.AsyncClient(base_url=queued.gateway, timeout=30) as client:
            asks = [
                body(unique("First in [[sim:tokens=20]] [[sim:tps=40]]")),
                body(unique("Second in [[sim:tokens=20]] [[sim:tps=40]]")),
            ]
            both = await asyncio.gather(*(client.post("/v1/messages", json=a) for a in asks))
            # The same streams in the tokens dialect, which does show a queue.
            logs = [await client.get(f"/api/streams/{r.headers['x-stream-id']}") for r in both]
    for response in both:
        assert response.status_code == 200
        read = frames(response.content)
        assert read[0].type == "message_start"  # nothing of the queue in Claude's format
        assert types(read).count("content_block_delta") == 20
    waited = [b'{"queued":true,"position":1}' in log.content for log in logs]
    assert sorted(waited) == [False, True]  # one of them did wait its turn


def test_the_model_it_answers_with_is_the_one_message_start_named(stack: Stack) -> None:
    response = post(stack.gateway, body(unique("Which model [[sim:tokens=2]]"), stream=False))
    message = response.json()
    assert message["model"] == MODEL
    assert message["id"] == f"msg_{response.headers['x-stream-id']}"
    assert response.headers["request-id"] == response.headers["x-request-id"]


def test_a_restarted_answer_read_in_claudes_format_ends_at_the_restart(stack: Stack) -> None:
    # Started on /api/*, which can tell its reader to reset: the answer restarts there.
    prompt = unique(
        "Restarted elsewhere [[sim:tokens=9]] [[sim:drop_after=3]] [[sim:fail_times=1]]"
    )
    api = httpx.post(
        f"{stack.gateway}/api/stream-response", json={"prompt": prompt, "model": NO_PREFILL}
    )
    assert b'{"reset":true' in api.content and b'{"done":true' in api.content
    sid = api.headers["x-stream-id"]
    read = frames(httpx.get(f"{stack.gateway}/v1/streams/{sid}").content)
    assert types(read) == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 3, "error",
    ]  # fmt: skip
    assert read[-1].data["error"]["type"] == "overloaded_error"
    assert read[-1].id is None  # what follows the restart is never spliced on
