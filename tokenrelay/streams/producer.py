"""The producer: runs one stream's generation and appends it to the stream log.

It is decoupled from every HTTP connection: it runs until the answer ends, the
stream is cancelled, or nobody has watched it for `abandon_after`.

Failures are handled here, so every provider gets the same behaviour:
  - an attempt that fails before its first delta is retried with exponential backoff
    and jitter, honouring `retry-after`, up to `retries` times in a row;
  - an attempt that fails after some text is continued: on a model that accepts an
    assistant prefill, the text so far (trailing whitespace stripped, as Claude
    requires) becomes the final assistant turn and the continuation is appended to
    the same stream; otherwise the answer restarts after a `reset` event (a stream
    whose reader cannot be told to reset, such as Claude's own format, ends with a
    retryable `overloaded` error instead: never a splice). Up to
    `continuations` times. An answer that holds a thinking or tool_use block also
    restarts (a prefill cannot carry them, and Claude refuses one with thinking on).
    A cut inside a tool_use or thinking block cannot be continued and ends the
    stream with a clear error;
  - the usage of every attempt is summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from tokenrelay import events
from tokenrelay.admission.budgets import BudgetExceeded, Meter
from tokenrelay.admission.gate import QueueTimeout, Ticket
from tokenrelay.admission.rate_limits import estimate_tokens
from tokenrelay.errors import StoreUnavailable, UpstreamError, UpstreamIncomplete
from tokenrelay.observability import telemetry
from tokenrelay.observability.log import log_event
from tokenrelay.observability.tracing import NO_STREAM, Attempt, AttemptKind, StreamTrace
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import (
    GenerationRequest,
    MessageEnd,
    MessageStart,
    ToolUse,
    Usage,
)
from tokenrelay.streams.log import Entry, Opening, StreamLog, StreamTakenOver
from tokenrelay.upstreams.pool import Choice, NoDeployment, Route

log = logging.getLogger("tokenrelay.producer")

RESET = events.Reset("upstream_error")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_ceiling: float = 30.0
    continuations: int = 3

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry` (0-based), or None to give up."""
        if retry >= self.retries:
            return None
        if retry_after is not None and retry_after > 0:
            return retry_after if retry_after <= self.retry_after_ceiling else None
        backoff: float = min(self.base_delay * 2.0**retry, self.max_delay)
        return backoff * (1 - 0.25 * random.random())


@dataclass(frozen=True, slots=True)
class StopReason:
    """Why a producer was cancelled, as its final `error` event states it."""

    message: str
    code: str
    retryable: bool
    final: bool = True  # False: stop without a final event (the stream is handed over)


CANCELLED = StopReason("Stream cancelled", "cancelled", False)
ABANDONED = StopReason("Stream abandoned: no client for too long", "abandoned", False)
SHUTDOWN = StopReason("Server shutting down", "shutdown", True)
HANDED_OVER = StopReason("Stream handed over to another instance", "handover", True, final=False)


# Events that open a block a prefill cannot carry.
BLOCKS: frozenset[type] = frozenset({events.Thinking, events.ToolUseStart})


@dataclass(slots=True)
class Answer:
    """The text of the current answer so far: what a continuation prefills."""

    parts: list[str] = field(default_factory=list)
    # It holds a thinking or tool_use block: a continuation must restart it.
    blocks: bool = False

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> Answer:
        answer = cls()
        for entry in entries:
            event = entry.event
            if type(event) is events.Text:
                answer.parts.append(event)
            elif type(event) is events.Reset:
                answer.parts.clear()
                answer.blocks = False
            elif type(event) in BLOCKS:
                answer.blocks = True
        return answer

    @property
    def text(self) -> str:
        return "".join(self.parts)


def continuation_request(request: GenerationRequest, so_far: str) -> GenerationRequest:
    """The request again, with the answer so far as the final assistant turn."""
    messages = list(request.messages)
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and isinstance(last["content"], str):
        messages[-1] = {"role": "assistant", "content": (last["content"] + so_far).rstrip()}
    else:
        messages.append({"role": "assistant", "content": so_far.rstrip()})
    return dataclasses.replace(request, messages=messages)


def _opening(model: str, usage: Usage) -> Opening:
    counts = usage.as_dict()
    del counts["output_tokens"]  # not known yet
    return Opening(model, counts)


def _rejects_prefill(exc: UpstreamError) -> bool:
    return exc.status == 400 and "prefill" in exc.message.lower()


class Producer:
    # One a stream, alive while it runs: slots, not a `__dict__` (1.6 KiB a stream).
    __slots__ = (
        "_answer", "_attempt_deltas", "_budget_check", "_cost_usd", "_log", "_models",
        "_retry", "_t0", "_ticket", "_tokens", "_upstream", "_waited",
        "_waited_for_upstream", "attempts", "continuations", "estimated", "finished",
        "first_text_at", "meter", "model", "request", "restartable", "retries",
        "retries_total", "route", "served_model", "started_at", "status", "stop_reason",
        "stop_reason_text", "stream_id", "trace", "usage",
    )  # fmt: skip

    def __init__(
        self,
        *,
        stream_id: str,
        request: GenerationRequest,
        upstream: Route,
        log: StreamLog,
        models: ModelTable,
        retry: RetryPolicy,
        answer: Answer | None = None,
        ticket: Ticket | None = None,
        meter: Meter | None = None,
        budget_check: Callable[[], Awaitable[Meter | None]] | None = None,
        route: str = "api",
        trace: StreamTrace = NO_STREAM,
        restartable: bool = True,
        model: str | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.route = route  # the API the stream came by, a label of its metrics
        # False: its reader cannot be told to forget what it was shown (Claude's own
        # format cannot say `reset`), so a failure that would restart it ends it.
        self.restartable = restartable
        self.trace = trace
        # The stream's spending against its principal's budget, checked per token.
        self.meter = meter
        # Or how to get one, for a stream taken over: its budget may be spent by now.
        self._budget_check = budget_check
        # Its place at the gate: the producer waits for a slot, and gives it back.
        self._ticket = ticket
        self.request = request
        # Which deployment and model each attempt goes to.
        self._upstream = upstream
        # The model answering: the one asked for, or a fallback (or, for a takeover,
        # the one that began the answer). Costs are at its prices.
        self.model = model or request.model
        self._log = log
        self._models = models
        self._retry = retry
        # Set when continuing an answer begun elsewhere (a takeover): it is continued.
        self._answer = answer or Answer()
        self.usage = Usage()
        self._cost_usd = 0.0  # of the attempts so far, each at its own model's prices
        if answer is not None:  # the earlier producer's usage is lost with it: estimate
            self.usage.output_tokens = len(answer.parts)
            self._cost_usd = models.cost_usd(self.model, self.usage)
        self._waited_for_upstream = 0.0  # seconds, while no deployment could take it
        # What an attempt may use, for a deployment's tokens-per-minute cap.
        self._tokens = estimate_tokens(request) if upstream.counts_tokens else 0
        self.stop_reason: StopReason = CANCELLED
        self.retries = 0  # in a row, before the current attempt's first delta
        self.retries_total = 0
        self.continuations = 0
        self.attempts = 0
        self._attempt_deltas = 0
        self.finished = False
        # How it went, for the stream's usage record.
        self.status = "running"  # then "done", or the code of the final error
        self.stop_reason_text: str | None = None
        self.served_model = self.model  # as the upstream names it (it may add a date)
        # Usage counted from the deltas seen, not reported (a cut, a cancel, a takeover).
        self.estimated = answer is not None
        self.started_at = time.time()
        self.first_text_at: float | None = None  # time.monotonic() of the first text
        self._waited = False  # at the gate, in the queue
        self._t0 = time.monotonic()

    @property
    def fell_back(self) -> bool:
        return self.model != self.request.model

    @property
    def ttft_ms(self) -> float | None:
        first = self.first_text_at
        return None if first is None else (first - self._t0) * 1000

    @property
    def duration_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000

    async def run(self) -> None:
        lost: str | None = None  # why this instance stopped without ending the stream
        try:
            if self._budget_check is not None:
                try:
                    self.meter = await self._budget_check()
                except BudgetExceeded as exc:
                    await self._finish_error(exc.message, exc.code, False)
                    return
            if self._ticket is not None:
                with self.trace.queue_wait(self._ticket.position):
                    await self._ticket.wait(self._queued)
            if self._waited:
                telemetry.queue_waited(time.monotonic() - self._t0)
            await self._generate()
        except QueueTimeout as exc:
            telemetry.queue_rejected("timeout", self.stream_id)
            await self._finish_error(exc.message, exc.code, True)
        except asyncio.CancelledError:
            # Record why the stream ended, with what it had cost so far, then let the
            # cancellation go on.
            reason = self.stop_reason
            if reason.final:
                with contextlib.suppress(StoreUnavailable):
                    await self._finish_error(reason.message, reason.code, reason.retryable)
            raise
        except StreamTakenOver:
            lost = "taken_over"
            log_event(log, "taken_over_elsewhere", stream_id=self.stream_id)
        except StoreUnavailable as exc:
            lost = "store_lost"
            # Nothing more can be logged; the lease lapses and the stream is taken over
            # (by this process or another) once the store is back.
            log_event(log, "store_lost", level=logging.WARNING, stream_id=self.stream_id, error=exc)
        except Exception:
            log_event(
                log, "producer_failed", level=logging.ERROR, exc_info=True, stream_id=self.stream_id
            )
            await self._finish_error("Internal gateway error", "internal", True)
        finally:
            if self._ticket is not None:
                self._ticket.release()
            status = self.status if self.finished else lost or self.stop_reason.code
            self.trace.end(self, status)

    async def _queued(self, position: int) -> None:
        if not self._waited:
            self._waited = True
            telemetry.queued(self.stream_id, position)
        await self._log.append(self.stream_id, events.Queued(position))

    async def _generate(self) -> None:
        while True:
            started = bool(self._answer.parts) or self._answer.blocks
            try:
                choice = await self._upstream.choose(
                    self.request.model, self.model, started=started, tokens=self._tokens
                )
            except NoDeployment as exc:
                if not await self._wait_for_upstream(exc):
                    return
                continue
            try:
                if choice.model != self.model and not await self._switch_model(choice, started):
                    return
                so_far = self._answer.text
                request = self.request
                if self.model != request.model:
                    request = dataclasses.replace(request, model=self.model)
                if so_far:
                    request = continuation_request(request, so_far)
                # Claude refuses a prefill ending in whitespace, so it is stripped; the
                # continuation then starts with that whitespace, which was already sent.
                skip = len(so_far) - len(so_far.rstrip())
                self.attempts += 1
                try:
                    with self.trace.attempt(self.attempts, self._kind(), len(so_far)) as attempt:
                        if await self._attempt(request, skip, attempt, choice):
                            return
                        raise UpstreamIncomplete("upstream stream ended without message_stop")
                except UpstreamError as exc:
                    await choice.failed(exc, started=choice.answered)
                    self._upstream.failed_on(choice)
                    if not await self._recover(exc, continuing=bool(so_far)):
                        return
            finally:
                choice.close()

    async def _switch_model(self, choice: Choice, started: bool) -> bool:
        """The answer goes on with a fallback model (or back to the one asked for);
        once it has begun, only after a reset. False when the stream has ended."""
        if started and not await self._restart(
            UpstreamError("model unavailable", error_type="overloaded_error")
        ):
            return False
        self.model = self.served_model = choice.model
        if choice.model != self.request.model:
            telemetry.model_fallback(self.stream_id, self.request.model, choice.model, choice.name)
        return True

    async def _wait_for_upstream(self, exc: NoDeployment) -> bool:
        """No deployment can take the call now: wait until one can, instead of calling
        one that is cooling down (a wait is not a failed attempt). False when it would
        take too long and the stream has ended."""
        wait = exc.retry_after or 0.05
        if self._waited_for_upstream + wait > self._retry.retry_after_ceiling:
            await self._finish_error(exc.message, exc.code, True)
            return False
        first = not self._waited_for_upstream
        self._waited_for_upstream += wait
        if first:  # once a stream: a wait for a probe's verdict polls in short steps
            log_event(
                log, "upstream_wait", level=logging.WARNING, stream_id=self.stream_id,
                delay_s=round(wait, 3), model=self.model,
            )  # fmt: skip
        await asyncio.sleep(wait)
        return True

    def _kind(self) -> AttemptKind:
        """What the attempt about to start is (for its span)."""
        if self.retries:
            return "retry"
        return "first" if self.attempts == 1 and not self._answer.parts else "continuation"

    async def _attempt(
        self, request: GenerationRequest, skip: int, attempt: Attempt, choice: Choice
    ) -> bool:
        """One upstream attempt; True when it reached message_stop."""
        append = self._log.append
        sid = self.stream_id
        parts = self._answer.parts
        usage = Usage()
        self._attempt_deltas = 0
        ended = False
        stop_reason: str | None = None
        stop_sequence: str | None = None
        started = time.monotonic()
        first_delta: float | None = None  # this attempt's, for the upstream's time to it
        first_out = True
        meter = self.meter
        model = request.model
        per_token = self._models.output_micro_usd(model) if meter else 0.0
        over_budget = False
        try:
            async with contextlib.aclosing(choice.provider.stream(request)) as deltas:
                async for delta in deltas:
                    if type(delta) is str:
                        if first_delta is None:
                            first_delta = time.monotonic()
                            if self.first_text_at is None:
                                self.first_text_at = first_delta
                                telemetry.first_token(sid, (first_delta - self._t0) * 1000)
                        if skip:
                            dropped = min(skip, len(delta) - len(delta.lstrip()))
                            delta = delta[dropped:]
                            if not delta:
                                skip -= dropped
                                continue
                            skip = 0
                        # Charged before it is sent: the token that would cross the
                        # budget is never shown, and the upstream call stops now.
                        if meter and not meter.charge(per_token) and not await meter.refill():
                            over_budget = True
                            break
                        self._attempt_deltas += 1
                        parts.append(delta)
                        await append(sid, delta)  # a text event is the delta itself
                        if first_out:
                            # The readers' turn: the first token goes out now, not after
                            # the rest of the upstream's burst is decoded and appended.
                            first_out = False
                            await asyncio.sleep(0)
                    elif isinstance(delta, MessageStart):
                        choice.opened()
                        usage = delta.usage
                        self.served_model = delta.model or model
                        if not (parts or self._answer.blocks):  # the answer begins here
                            await self._log.set_opening(sid, _opening(self.served_model, usage))
                        if meter and not meter.charge(self._input_micro_usd(model, usage)):
                            over_budget = not await meter.refill()
                            if over_budget:
                                break
                    elif isinstance(delta, events.Thinking | events.ToolInput):
                        # Generated tokens like text: charged, then appended as they come.
                        if meter and not meter.charge(per_token) and not await meter.refill():
                            over_budget = True
                            break
                        self._attempt_deltas += 1
                        self._answer.blocks = True
                        await append(sid, delta)
                    elif isinstance(delta, ToolUse):
                        self._attempt_deltas += 1
                        await append(sid, events.ToolUse(delta.id, delta.name, delta.input))
                    elif isinstance(delta, events.ToolUseStart | events.ThinkingSignature):
                        self._attempt_deltas += 1
                        self._answer.blocks = True
                        await append(sid, delta)
                    elif isinstance(delta, MessageEnd):
                        usage.output_tokens = delta.output_tokens
                        stop_reason, stop_sequence = delta.stop_reason, delta.stop_sequence
                        ended = True
                        break
        finally:
            # Without message_delta (a failure, a cancel) the deltas seen are the best
            # estimate of what the attempt cost.
            if not ended:
                usage.output_tokens = max(usage.output_tokens, self._attempt_deltas)
                self.estimated = self.estimated or self._attempt_deltas > 0
            self.usage.add(usage)
            self._cost_usd += self._models.cost_usd(model, usage)
            if first_delta is not None:
                telemetry.upstream_first_delta(model, first_delta - started)
            attempt.counted(self._attempt_deltas, usage, ended)
        if over_budget:
            assert meter is not None
            telemetry.budget_exceeded(meter.scope, "mid_stream")
            await self._finish_error(meter.exceeded().message, "budget_exceeded", False)
            return True
        if ended:
            await self._finish_done(stop_reason, stop_sequence)
        return ended

    async def _recover(self, exc: UpstreamError, *, continuing: bool) -> bool:
        """Decide what a failed attempt leads to; False when the stream has ended."""
        sid = self.stream_id
        telemetry.upstream_error(exc.error_type)
        if continuing and _rejects_prefill(exc):
            # The model turned out not to accept a prefill: remember, and restart.
            self._models.mark_rejects_prefill(self.model)
            return await self._restart(exc)
        if not exc.retryable:
            await self._finish_error(exc.message, exc.code, False)
            return False
        if self._attempt_deltas == 0:
            if self.retries < self._retry.retries and self._upstream.elsewhere(self.model):
                wait: float | None = 0.0  # another deployment can take it now, whatever
                # this one's retry-after says
            else:
                wait = self._retry.delay(self.retries, exc.retry_after)
            if wait is None:
                await self._finish_error(exc.message, exc.code, True)
                return False
            self.retries += 1
            self.retries_total += 1
            telemetry.retried(exc.error_type)
            log_event(
                log, "upstream_retry", level=logging.WARNING, stream_id=sid,
                retry=self.retries, delay_s=wait, status=exc.status, error_type=exc.error_type,
            )  # fmt: skip
            await asyncio.sleep(wait)
            return True
        self.retries = 0
        cut = exc.cut_block if isinstance(exc, UpstreamIncomplete) else None
        if cut is not None:
            await self._finish_error(
                f"Upstream stream was cut inside a {cut} block, which cannot be continued",
                "incomplete_block",
                False,
            )
            return False
        self.continuations += 1
        if self.continuations > self._retry.continuations:
            await self._finish_error(exc.message, exc.code, True)
            return False
        if self._answer.blocks or not self._models.accepts_prefill(self.model):
            return await self._restart(exc)
        telemetry.continued(exc.error_type)
        log_event(
            log, "continuation", level=logging.WARNING, stream_id=sid, mode="prefill",
            attempt=self.continuations, chars=len(self._answer.text), error_type=exc.error_type,
        )  # fmt: skip
        return True

    async def _restart(self, exc: UpstreamError) -> bool:
        if not self.restartable:
            await self._finish_error(
                "The upstream failed mid-answer and this answer cannot be continued: "
                "retry the request",
                "overloaded",
                True,
            )
            return False
        telemetry.restarted()
        log_event(
            log, "reset", level=logging.WARNING, stream_id=self.stream_id,
            error_type=exc.error_type,
        )  # fmt: skip
        self._answer.parts.clear()
        self._answer.blocks = False
        await self._log.append(self.stream_id, RESET)
        return True

    def _input_micro_usd(self, model: str, usage: Usage) -> float:
        prompt = Usage(
            input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )
        return self._models.cost_usd(model, prompt) * 1e6

    @property
    def cost_usd(self) -> float:
        return round(self._cost_usd, 8)

    async def _finish_done(self, stop_reason: str | None, stop_sequence: str | None) -> None:
        self.finished = True
        self.status, self.stop_reason_text = "done", stop_reason
        usage = self.usage.as_dict()
        done = events.Done(
            stop_reason, usage, self.cost_usd, stop_sequence=stop_sequence, model=self.model
        )
        await self._log.append(self.stream_id, done)

    async def _finish_error(self, message: str, code: str, retryable: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.status = code
        failed = events.Failed(message, code, retryable, self.usage.as_dict(), self.cost_usd)
        await self._log.append(self.stream_id, failed)
