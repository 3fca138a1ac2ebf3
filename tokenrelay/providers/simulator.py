"""The `simulator` provider: the built-in simulator, in-process, no HTTP in between.

It streams what `tokenrelay simulate` would send the `anthropic` provider, and breaks
where that server would (`Plan.fault_at`), so both providers pass the same contract
suite (tests/contracts). Like that server, it keeps the `traceparent` each attempt
came with (`traceparents`), so tests can follow a trace into the upstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from tokenrelay.errors import UpstreamError, UpstreamIncomplete, retryable_status
from tokenrelay.events import Thinking, ThinkingSignature, ToolInput, ToolUseStart
from tokenrelay.observability.tracing import upstream_headers
from tokenrelay.providers.base import (
    Delta,
    GenerationRequest,
    MessageEnd,
    MessageStart,
    ToolUse,
    Usage,
)
from tokenrelay.simulator.engine import Fault, Plan, SimError, Simulator


def request_body(request: GenerationRequest) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(request).items() if v is not None}


class SimulatorProvider:
    name = "simulator"

    def __init__(self, ttft_ms: int = 300, tps: float = 60.0) -> None:
        self.simulator = Simulator(ttft_ms=ttft_ms, tps=tps)
        self.traceparents: deque[str] = deque(maxlen=1000)  # the latest, oldest first

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        trace = upstream_headers()
        if trace is not None:
            self.traceparents.append(trace["traceparent"])
        try:
            plan = self.simulator.plan(request_body(request))
        except SimError as exc:
            raise UpstreamError(
                exc.message,
                status=exc.status,
                error_type=exc.error_type,
                retryable=retryable_status(exc.status),
                retry_after=exc.retry_after,
            ) from None
        start = time.monotonic()
        yield MessageStart(plan.model, Usage(input_tokens=plan.input_tokens))
        sent = 0  # deltas of every block, as the server counts them for faults and pace
        if plan.thinking is not None:
            for thinking in plan.thinking:
                _raise_fault(plan, sent, "thinking")
                await _pace(start + plan.delay_before(sent))
                yield Thinking(thinking)
                sent += 1
            yield ThinkingSignature(plan.signature)
        for text in plan.deltas:
            _raise_fault(plan, sent, None)
            await _pace(start + plan.delay_before(sent))
            yield text
            sent += 1
        if plan.tool is not None:
            tool = plan.tool
            yield ToolUseStart(tool.id, tool.name)
            for fragment in tool.json_fragments():
                _raise_fault(plan, sent, "tool_use")
                await _pace(start + plan.delay_before(sent))
                yield ToolInput(fragment)
                sent += 1
        _raise_fault(plan, sent, None if plan.tool is None else "tool_use")
        if plan.tool is not None:
            yield ToolUse(plan.tool.id, plan.tool.name, plan.tool.input)
        yield MessageEnd(plan.stop_reason, sent, plan.stop_sequence)

    async def count_tokens(self, request: GenerationRequest) -> int:
        try:
            return self.simulator.count_tokens(request_body(request))
        except SimError as exc:
            raise UpstreamError(exc.message, status=exc.status, error_type=exc.error_type) from None

    async def aclose(self) -> None:
        return None


async def _pace(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _raise_fault(plan: Plan, sent: int, block: str | None) -> None:
    """The in-process effect of a fault: the `UpstreamIncomplete` the anthropic provider
    would raise on seeing it over HTTP."""
    fault = plan.fault_at(sent)
    if fault is Fault.ERROR:
        raise UpstreamIncomplete("Overloaded", error_type="overloaded_error", cut_block=block)
    if fault is Fault.DROP:
        raise UpstreamIncomplete("upstream connection dropped", cut_block=block)
    if fault is Fault.STALL:
        # In-process there is no socket to fall silent on: report the stall at once.
        raise UpstreamIncomplete("upstream timed out (stalled)", cut_block=block)
