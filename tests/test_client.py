"""The Python client, `tokenrelay.client`: typed events, resume across a cut connection,
the sync wrapper, and API keys (also through `tokenrelay chat`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import ROOT, Stack, assert_whole_answer, direct_text, run_stack, unique
from tests.support.auth import api_key_auth
from tests.support.proxy import CuttingProxy
from tokenrelay.client import StreamEvent, TokenRelay, TokenRelayError, stream_sync


async def test_async_client_yields_typed_events_with_the_simulators_text(stack: Stack) -> None:
    prompt = unique("Typed events [[sim:tokens=14]]")
    async with TokenRelay(stack.gateway) as relay:
        events = [e async for e in relay.stream(prompt)]
    assert_whole_answer(events, await direct_text(stack.simulator, prompt))
    done = events[-1]
    assert done.data["usage"]["output_tokens"] == 14 and done.data["stop_reason"] == "end_turn"
    assert len([e for e in events if e.token is not None]) == 14


async def test_async_client_resumes_a_cut_connection_without_gap_or_duplicate(
    stack: Stack,
) -> None:
    words = unique("Cut me off [[sim:tokens=40]]")
    expected = await direct_text(stack.simulator, words)
    proxy = CuttingProxy(urlsplit(stack.gateway).port or 80)
    base = await proxy.start()
    events: list[StreamEvent] = []
    try:
        async with TokenRelay(base) as relay:
            async for event in relay.stream(f"{words} [[sim:tps=20]]"):
                events.append(event)
                if len(events) in (6, 20):
                    proxy.cut()
    finally:
        await proxy.close()
    assert_whole_answer(events, expected)
    assert proxy.accepted == 3  # the start, then one resume per cut


def test_sync_client_yields_the_same_events(stack: Stack) -> None:
    prompt = unique("No event loop here [[sim:tokens=9]]")
    events = list(stream_sync(stack.gateway, prompt))
    assert_whole_answer(events, asyncio.run(direct_text(stack.simulator, prompt)))


@pytest.fixture
def keyed_stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    args, key = api_key_auth(tmp_path, "alice")
    with run_stack(tmp_path, *args) as stack:
        yield stack, key


async def test_api_key_is_sent_by_the_async_and_sync_clients(
    keyed_stack: tuple[Stack, str],
) -> None:
    stack, key = keyed_stack
    prompt = unique("Keyed [[sim:tokens=5]]")
    expected = await direct_text(stack.simulator, prompt)
    async with TokenRelay(stack.gateway) as relay:
        with pytest.raises(TokenRelayError) as refused:
            _ = [e async for e in relay.stream(prompt)]
    assert (refused.value.status, refused.value.error_type) == (401, "authentication_error")
    async with TokenRelay(stack.gateway, api_key=key) as relay:
        assert_whole_answer([e async for e in relay.stream(prompt)], expected)
    events = await asyncio.to_thread(lambda: list(stream_sync(stack.gateway, prompt, api_key=key)))
    assert_whole_answer(events, expected)


async def test_chat_takes_the_api_key_from_a_flag_or_the_environment(
    keyed_stack: tuple[Stack, str],
) -> None:
    stack, key = keyed_stack
    prompt = unique("Keyed chat [[sim:tokens=7]]")
    expected = await direct_text(stack.simulator, prompt)
    chat = [sys.executable, "-m", "tokenrelay", "chat", prompt, "--url", stack.gateway]
    env = {k: v for k, v in os.environ.items() if k != "TOKENRELAY_API_KEY"}

    def run(args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    refused = await asyncio.to_thread(run, chat)
    assert refused.returncode == 1 and "401 authentication_error" in refused.stderr
    with_flag = await asyncio.to_thread(run, [*chat, "--api-key", key])
    assert with_flag.returncode == 0, with_flag.stderr
    assert with_flag.stdout == expected
    from_env = await asyncio.to_thread(run, chat, TOKENRELAY_API_KEY=key)
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout == expected


def test_the_client_package_loads_without_the_server() -> None:
    # A program that only talks to a gateway must not pay for FastAPI or the SDK.
    probe = (
        "import sys, tokenrelay.client, tokenrelay.client.chat, tokenrelay.client.bench\n"
        "roots = {m.partition('.')[0] for m in sys.modules}\n"
        "print(sorted(m for m in sys.modules if m.startswith('tokenrelay.')))\n"
        "print(sorted(roots & {'fastapi', 'starlette', 'uvicorn', 'anthropic', 'redis', 'jwt'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        "['tokenrelay.client', 'tokenrelay.client.bench', 'tokenrelay.client.bench_proc', "
        "'tokenrelay.client.chat', 'tokenrelay.client.relay']",
        "[]",
    ]
