"""The response cache: off by default; when on, an identical request replays the
finished answer (its own stream, `cached: true`, no upstream call, cost 0); never an
error, a cut or a max_tokens answer; only for temperature 0 (Claude's default is 1); a
caller can ask for a fresh answer; per principal by default."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import assert_whole_answer, run_stack, start, unique
from tests.support.auth import create_key
from tests.support.streams import Read, read_stream


def text(read: Read) -> str:
    return "".join(e.data["token"] for e in read.events if "token" in e.data)


async def test_an_identical_request_replays_the_answer_without_an_upstream_call(
    tmp_path: Path,
) -> None:
    prompt = f"{unique('Cache me')} [[sim:tokens=12]]"
    with run_stack(tmp_path, TOKENRELAY_CACHE_TTL="60") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            first = await start(client, {"prompt": prompt, "temperature": 0})
            again = await start(client, {"prompt": prompt, "temperature": 0})
            assert stack.sim_stats()["requests"] == 1
            assert again.headers["x-stream-id"] != first.headers["x-stream-id"]
            assert_whole_answer(again.events, text(first))
            assert first.events[-1].data["cached"] is False
            assert again.events[-1].data == {
                "done": True, "stop_reason": "end_turn",
                "usage": {"input_tokens": 0, "output_tokens": 0},
                "cost_usd": 0.0, "cached": True,
            }  # fmt: skip
            # A caller may ask for a fresh answer, by body or by header.
            await start(client, {"prompt": prompt, "temperature": 0, "cache": False})
            await start(
                client, {"prompt": prompt, "temperature": 0}, headers={"cache-control": "no-cache"}
            )
            assert stack.sim_stats()["requests"] == 3
            # EventSource sends `no-cache` on every request, so there it does not count.
            es = await read_stream(
                client, "GET", "/api/stream-response", params={"prompt": prompt, "temperature": 0},
                headers={"cache-control": "no-cache"},
            )  # fmt: skip
            assert es.events[-1].data["cached"] is True and text(es) == text(first)
            assert stack.sim_stats()["requests"] == 3


async def test_only_answers_that_ended_as_asked_are_kept(tmp_path: Path) -> None:
    with run_stack(tmp_path, TOKENRELAY_CACHE_TTL="60") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            failing = f"{unique('Fails')} [[sim:status=400]]"
            truncated = {"prompt": f"{unique('Long')} [[sim:tokens=20]]", "max_tokens": 5}
            truncated["temperature"] = 0
            sampled = {"prompt": unique("Warm"), "temperature": 0.7}
            default = {"prompt": unique("At Claude's default temperature, 1")}
            for body in ({"prompt": failing, "temperature": 0}, truncated, sampled, default):
                await start(client, body)
                await start(client, body)
            assert stack.sim_stats()["requests"] == 8  # nothing came from the cache


async def test_the_cache_is_off_by_default_and_per_principal_when_on(tmp_path: Path) -> None:
    prompt = f"{unique('Mine')} [[sim:tokens=5]]"
    with run_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            await start(client, {"prompt": prompt, "temperature": 0})
            await start(client, {"prompt": prompt, "temperature": 0})
        assert stack.sim_stats()["requests"] == 2
    keys_file = tmp_path / "keys.txt"
    alice, bob = create_key(keys_file, "alice"), create_key(keys_file, "bob")
    auth = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    with run_stack(tmp_path, *auth, TOKENRELAY_CACHE_TTL="60") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            for key in (alice, alice, bob, bob):
                await start(
                    client, {"prompt": prompt, "temperature": 0}, headers={"x-api-key": key}
                )
        assert stack.sim_stats()["requests"] == 2  # one per principal
    with run_stack(
        tmp_path, *auth, TOKENRELAY_CACHE_TTL="60", TOKENRELAY_CACHE_SCOPE="global"
    ) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            for key in (alice, bob):
                await start(
                    client, {"prompt": prompt, "temperature": 0}, headers={"x-api-key": key}
                )
        assert stack.sim_stats()["requests"] == 1
