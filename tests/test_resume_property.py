"""Property: however often and wherever the client's connection is cut, resuming with
Last-Event-ID reassembles exactly the uninterrupted answer, each event once."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Stack, assert_whole_answer, direct_text, resume, start

PROMPT = "The property of resumption [[sim:tokens=24]] [[sim:tps=150]]"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=8), max_size=5),
    pause=st.sampled_from([0.0, 0.05]),
)
def test_cut_anywhere_and_resume_reassembles_the_whole_text(
    stack: Stack, cuts: list[int], pause: float
) -> None:
    asyncio.run(_cut_and_resume(stack, cuts, pause))


async def _cut_and_resume(stack: Stack, cuts: list[int], pause: float) -> None:
    expected = await direct_text(stack.simulator, PROMPT)
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": PROMPT}, stop_after=cuts[0] if cuts else None)
        events = read.events
        for cut in [*cuts[1:], None]:
            if "done" in events[-1].data:
                break
            await asyncio.sleep(pause)
            events += (await resume(client, events[-1].id, stop_after=cut)).events
    assert_whole_answer(events, expected)
