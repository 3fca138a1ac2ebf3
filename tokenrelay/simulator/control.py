"""What makes one `tokenrelay simulate` a particular upstream deployment, HTTP-free:
rate limits like Claude's, and faults set from outside (the control route) rather than
in the prompt, since every deployment of a pool gets the same prompt.

Rate limits are fixed windows: the first request after a window has run out opens the
next one, `window_s` long, and each limit counts from zero in it. Tokens are counted as
Claude's token limit estimates them at admission: input tokens plus `max_tokens`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenrelay.errors import error_type_for
from tokenrelay.simulator.engine import Fault, SimError, input_tokens

Header = tuple[bytes, bytes]

MID_STREAM = {"error_after": Fault.ERROR, "drop_after": Fault.DROP, "stall_after": Fault.STALL}
FAULT_FIELDS = frozenset({"status", "count", "seconds", "retry_after", *MID_STREAM})


def _rfc3339(epoch: float) -> bytes:
    """A whole second, rounded up so that it is never before the moment meant."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch))).encode()


class RateLimits:
    """Requests and tokens per fixed window; a limit of 0 is none (and sends no headers)."""

    def __init__(
        self, rpm: int = 0, tpm: int = 0, window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.rpm, self.tpm, self.window_s, self.clock = rpm, tpm, window_s, clock
        self.enabled = bool(rpm or tpm)
        self._requests_limit = (b"anthropic-ratelimit-requests-limit", b"%d" % rpm)
        self._tokens_limit = (b"anthropic-ratelimit-tokens-limit", b"%d" % tpm)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.window_end = 0.0
        self._reset_header = b""

    def _roll(self, now: float) -> None:
        if now >= self.window_end:
            self.window_end = now + self.window_s
            self.requests = self.tokens = 0
            self._reset_header = _rfc3339(self.window_end)

    def admit(self, tokens: int) -> tuple[list[Header], SimError | None]:
        """Count a request that would use `tokens`, or refuse it with Claude's 429 (which
        counts nothing); either way the headers its response carries."""
        if not self.enabled:
            return [], None
        now = self.clock()
        self._roll(now)
        over_requests = bool(self.rpm) and self.requests + 1 > self.rpm
        over_tokens = bool(self.tpm) and self.tokens + tokens > self.tpm
        if over_requests or over_tokens:
            retry_after = max(1, math.ceil(self.window_end - now))
            what = "requests" if over_requests else "request tokens"
            limit = self.rpm if over_requests else self.tpm
            error = SimError(
                429,
                f"Number of {what} has exceeded your rate limit of {limit} per {self.window_s:g} s",
                retry_after,
            )
            return self._headers(over_requests, over_tokens), error
        self.requests += 1
        self.tokens += tokens
        return self._headers(False, False), None

    def headers(self) -> list[Header]:
        """The headers of a response that was not admitted (a fault, a bad body)."""
        if not self.enabled:
            return []
        self._roll(self.clock())
        return self._headers(False, False)

    def _headers(self, no_requests: bool, no_tokens: bool) -> list[Header]:
        reset = self._reset_header
        headers: list[Header] = []
        if self.rpm:
            left = 0 if no_requests else self.rpm - self.requests
            headers += [self._requests_limit,
                        (b"anthropic-ratelimit-requests-remaining", b"%d" % left),
                        (b"anthropic-ratelimit-requests-reset", reset)]  # fmt: skip
        if self.tpm:
            left = 0 if no_tokens else max(0, self.tpm - self.tokens)
            headers += [self._tokens_limit,
                        (b"anthropic-ratelimit-tokens-remaining", b"%d" % left),
                        (b"anthropic-ratelimit-tokens-reset", reset)]  # fmt: skip
        return headers


def admission_tokens(body: dict[str, Any]) -> int:
    """What a request counts against a token limit: input tokens plus `max_tokens`."""
    messages = body.get("messages")
    max_tokens = body.get("max_tokens")
    counted = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else 0
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        system = body.get("system")
        counted += input_tokens(messages, system)
    return max(0, counted)


@dataclass(slots=True)
class RouteFault:
    """A fault set by `POST /_sim/fault`: an HTTP error, or a break mid-stream, for the
    next `count` requests (streams, for a break) or until `until` (monotonic)."""

    status: int | None = None
    retry_after: int | None = None
    kind: Fault | None = None
    after: int = 0
    count: int | None = None
    until: float | None = None

    def describe(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.status is not None:
            out["status"] = self.status
            if self.retry_after is not None:
                out["retry_after"] = self.retry_after
        else:
            name = next(n for n, k in MID_STREAM.items() if k is self.kind)
            out[name] = self.after
        if self.count is not None:
            out["count"] = self.count
        if self.until is not None:
            out["seconds"] = round(max(0.0, self.until - now), 3)
        return out


def _int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SimError(400, f"{name}: must be an integer of at least {low}")
    if high is not None and value > high:
        raise SimError(400, f"{name}: must be at most {high}")
    return value


def parse_fault(body: object, now: float) -> RouteFault:
    """A fault from the control route's JSON; SimError(400) for anything else."""
    if not isinstance(body, dict):
        raise SimError(400, "Request body must be a JSON object")
    unknown = sorted(set(body) - FAULT_FIELDS)
    if unknown:
        raise SimError(400, f"{unknown[0]}: Extra inputs are not permitted")
    breaks = [name for name in MID_STREAM if body.get(name) is not None]
    status = _int(body, "status", 400, 599)
    if (status is not None) + len(breaks) != 1:
        raise SimError(400, "a fault is one of status, error_after, drop_after, stall_after")
    fault = RouteFault(status=status)
    if status is None:
        fault.kind = MID_STREAM[breaks[0]]
        fault.after = _int(body, breaks[0], 0) or 0
        if body.get("retry_after") is not None:
            raise SimError(400, "retry_after: only with status")
    else:
        retry_after = _int(body, "retry_after", 0)
        fault.retry_after = retry_after if retry_after is not None else (
            1 if status in (429, 529) else None
        )  # fmt: skip
    count = _int(body, "count", 1)
    seconds = body.get("seconds")
    if seconds is not None:
        if count is not None:
            raise SimError(400, "a fault lasts a count or seconds, not both")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise SimError(400, "seconds: must be a positive number")
        fault.until = now + float(seconds)
    else:
        fault.count = count if count is not None else 1
    return fault


class Faults:
    """The one fault in force, if any; a new one replaces it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.current: RouteFault | None = None

    def set(self, body: object) -> RouteFault:
        self.current = parse_fault(body, self.clock())
        return self.current

    def clear(self) -> None:
        self.current = None

    def describe(self) -> dict[str, Any] | None:
        now = self.clock()
        fault = self._live(now)
        return fault.describe(now) if fault is not None else None

    def _live(self, now: float) -> RouteFault | None:
        fault = self.current
        if fault is not None and fault.until is not None and now >= fault.until:
            self.current = fault = None
        return fault

    def _spend(self, fault: RouteFault) -> None:
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.current = None

    def error(self) -> SimError | None:
        """The HTTP error the next request answers with, counted as used."""
        if self.current is None:  # the common case, asked first
            return None
        fault = self._live(self.clock())
        if fault is None or fault.status is None:
            return None
        self._spend(fault)
        return SimError(
            fault.status, f"Simulated {error_type_for(fault.status)}", fault.retry_after
        )

    def mid_stream(self) -> tuple[Fault, int] | None:
        """Where the next stream breaks, counted as used."""
        if self.current is None:
            return None
        fault = self._live(self.clock())
        if fault is None or fault.kind is None:
            return None
        self._spend(fault)
        return fault.kind, fault.after
