"""Coalescing: identical requests arriving while the first still generates join its
stream. The simulator counts the upstream calls; every client gets the whole answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support import Stack, assert_whole_answer, direct_text, run_stack, start, unique
from tests.support.auth import create_key

# Paced, so that every request arrives while the first is still generating.
PACED = "[[sim:tokens=60]] [[sim:tps=30]]"


async def _concurrently(stack: Stack, prompt: str, n: int, keys: list[str] | None = None) -> list:  # type: ignore[type-arg]
    async def one(i: int) -> object:
        headers = {"x-api-key": keys[i % len(keys)]} if keys else {}
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
            return await start(client, {"prompt": prompt}, headers=headers)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_twenty_identical_requests_make_one_upstream_call(tmp_path: Path) -> None:
    words = unique("Coalesce me")
    prompt = f"{words} {PACED}"
    with run_stack(tmp_path) as stack:
        reads = await _concurrently(stack, prompt, 20)
        expected = await direct_text(stack.simulator, f"{words} [[sim:tokens=60]]")
        # 1 through the gateway, 1 for direct_text.
        assert stack.sim_stats()["requests"] == 2
        assert len({r.headers["x-stream-id"] for r in reads}) == 1
        for read in reads:
            assert_whole_answer(read.events, expected)
        # A sequential repeat is a new answer, not a join: the first one had ended.
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
            again = await start(client, {"prompt": prompt})
        assert again.headers["x-stream-id"] != reads[0].headers["x-stream-id"]
        assert stack.sim_stats()["requests"] == 3
        assert [e["stream_id"] for e in _coalesced(stack)] == [reads[0].headers["x-stream-id"]] * 19


async def test_coalescing_is_per_principal_by_default_and_global_by_option(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys = [create_key(keys_file, "alice"), create_key(keys_file, "bob")]
    auth = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    words = unique("Two callers")
    prompt = f"{words} {PACED}"
    with run_stack(tmp_path, *auth) as stack:
        reads = await _concurrently(stack, prompt, 6, keys)
        assert stack.sim_stats()["requests"] == 2  # one stream per principal
        assert len({r.headers["x-stream-id"] for r in reads}) == 2
    with run_stack(tmp_path, *auth, TOKENRELAY_COALESCE="global") as stack:
        reads = await _concurrently(stack, prompt, 6, keys)
        assert stack.sim_stats()["requests"] == 1
        [stream_id] = {r.headers["x-stream-id"] for r in reads}
        # Bob joined alice's stream, so bob may resume it too.
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
            for key in keys:
                replay = await client.get(
                    f"/api/streams/{stream_id}", params={"after": 0}, headers={"x-api-key": key}
                )
                assert replay.status_code == 200
        expected = await direct_text(stack.simulator, f"{words} [[sim:tokens=60]]")
        for read in reads:
            assert_whole_answer(read.events, expected)


async def test_coalescing_off_makes_one_call_per_request(tmp_path: Path) -> None:
    prompt = f"{unique('No coalescing')} {PACED}"
    with run_stack(tmp_path, TOKENRELAY_COALESCE="off") as stack:
        reads = await _concurrently(stack, prompt, 5)
        assert stack.sim_stats()["requests"] == 5
        assert len({r.headers["x-stream-id"] for r in reads}) == 5


def _coalesced(stack: Stack) -> list[dict[str, str]]:
    from tests.support import log_events

    return log_events(stack.log_text(), "coalesced")
