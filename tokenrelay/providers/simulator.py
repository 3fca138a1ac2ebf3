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
        for i, text in enumerate(plan.deltas):
            _raise_fault(plan, i, None)
            delay = start + plan.delay_before(i) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield text
        sent = len(plan.deltas)
        if plan.tool is not None:
            # The tool input's fragments are deltas too, as the server streams them, but
            # the block is yielded only whole, as the anthropic provider does at its stop.
            for _ in plan.tool.json_fragments():
                _raise_fault(plan, sent, "tool_use")
                sent += 1
        _raise_fault(plan, sent, None if plan.tool is None else "tool_use")
        if plan.tool is not None:
            yield ToolUse(plan.tool.id, plan.tool.name, plan.tool.input)
        yield MessageEnd(plan.stop_reason, sent)

    async def aclose(self) -> None:
        return None


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
