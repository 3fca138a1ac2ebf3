"""The `simulator` provider: the built-in simulator, in-process, no HTTP in between."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from tokenrelay.errors import UpstreamError, UpstreamIncomplete
from tokenrelay.providers.base import (
    Delta,
    GenerationRequest,
    MessageEnd,
    MessageStart,
    ToolUse,
    Usage,
)
from tokenrelay.simulator.engine import Plan, SimError, Simulator

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def request_body(request: GenerationRequest) -> dict[str, Any]:
    body = {k: v for k, v in dataclasses.asdict(request).items() if v is not None}
    body.pop("extra", None)
    return body


class SimulatorProvider:
    name = "simulator"

    def __init__(self, ttft_ms: int = 300, tps: float = 60.0) -> None:
        self.simulator = Simulator(ttft_ms=ttft_ms, tps=tps)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        try:
            plan = self.simulator.plan(request_body(request))
        except SimError as exc:
            raise UpstreamError(
                exc.message,
                status=exc.status,
                error_type=exc.error_type,
                retryable=exc.status in RETRYABLE_STATUS,
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
        if plan.tool is None:
            _raise_fault(plan, sent, None)
        else:
            # Faults count the tool input's fragments too, as the server streams them.
            for i in range(len(plan.tool.json_fragments())):
                _raise_fault(plan, sent + i, "tool_use")
            sent += len(plan.tool.json_fragments())
            yield ToolUse(plan.tool.id, plan.tool.name, plan.tool.input)
        yield MessageEnd(plan.stop_reason, sent)

    async def aclose(self) -> None:
        return None


def _raise_fault(plan: Plan, sent: int, block: str | None) -> None:
    if plan.error_after == sent:
        raise UpstreamIncomplete("Overloaded", error_type="overloaded_error", cut_block=block)
    if plan.drop_after == sent:
        raise UpstreamIncomplete("upstream connection dropped", cut_block=block)
    if plan.stall_after == sent:
        # In-process there is no socket to fall silent on: report the stall at once.
        raise UpstreamIncomplete("upstream stalled", cut_block=block)
