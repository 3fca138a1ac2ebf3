"""What one instance knows of a deployment's health, and the rules that change it.

A deployment is, at any moment:
  healthy   taking calls;
  cooling   not called until `cooling_until`: it answered 429/529/5xx, failed to
            connect, refused the key, or said its rate limit is spent;
  probing   its cool-down is over and one call (the probe, claimed across instances)
            is finding out whether it is back: others wait for the verdict;
  full      this gateway's own per-minute cap for it (rpm/tpm) is reached.
A cool-down lasts the upstream's `retry-after` when it gave one (the upstream said how
long: it is not escalated), else a back-off that doubles with each such cool-down in a
row (`base`, `2 × base`, … up to `ceiling`). The first call that gets an answer started
ends it: the counts go back to 0.

Times are `time.monotonic()`; only what is shown (`until` in a snapshot) is wall-clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from tokenrelay.errors import UpstreamError, UpstreamIncomplete

WINDOW_S = 60.0  # the recent error rate's window


@dataclass(slots=True)
class RateLimitView:
    """The upstream's own rate-limit headers for one kind (requests or tokens), as last seen."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float = 0.0  # monotonic

    def headroom(self, now: float) -> float:
        """The part of the limit left: 1.0 when unknown, or once the window the figures
        are of has reset (a spent limit is whole again, though no answer said so yet)."""
        if not self.limit or self.remaining is None or 0 < self.reset_at <= now:
            return 1.0
        return max(0.0, min(1.0, self.remaining / self.limit))


@dataclass(slots=True)
class Health:
    in_flight: int = 0
    failures: int = 0  # calls in a row that cooled it
    backoffs: int = 0  # cool-downs in a row without a retry-after: the next one doubles
    cooling_until: float = 0.0
    reason: str = ""  # why it cooled
    probing: bool = False  # this instance's probe call is under way
    probe_elsewhere_until: float = 0.0  # another instance holds the probe until then
    full_until: float = 0.0  # the gateway's own rpm/tpm cap for it is reached
    requests: RateLimitView = field(default_factory=RateLimitView)
    tokens: RateLimitView = field(default_factory=RateLimitView)
    recent: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, failed)
    # Smooth weighted round-robin's running score (nginx's algorithm): spreads calls
    # by weight exactly, with no randomness to make a count uncertain.
    current: float = 0.0

    def state(self, now: float) -> str:
        if now < self.cooling_until:
            return "cooling"
        if self.failures and (self.probing or now < self.probe_elsewhere_until):
            return "probing"
        if now < self.full_until or self.spent_until(now) > now:
            return "full"
        return "healthy"

    def needs_probe(self, now: float) -> bool:
        """Cooled before and cooled no longer: the next call is a probe."""
        return self.failures > 0 and now >= self.cooling_until

    def spent_until(self, now: float) -> float:
        """When the upstream's own limit, said spent in its headers, resets (else 0)."""
        until = 0.0
        for view in (self.requests, self.tokens):
            if view.remaining == 0 and view.reset_at > now:
                until = max(until, view.reset_at)
        return until

    def headroom(self, now: float) -> float:
        return min(self.requests.headroom(now), self.tokens.headroom(now))

    def note(self, now: float, failed: bool) -> None:
        recent = self.recent
        recent.append((now, failed))
        while recent and recent[0][0] < now - WINDOW_S:
            recent.popleft()

    def error_rate(self, now: float) -> tuple[int, int]:
        """(calls, failed calls) in the last minute."""
        recent = [failed for when, failed in self.recent if when >= now - WINDOW_S]
        return len(recent), sum(recent)

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """Claude's `anthropic-ratelimit-*` headers, from any answer."""
        wall = time.time()
        for kind, view in (("requests", self.requests), ("tokens", self.tokens)):
            remaining = _int(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
            if remaining is None:
                continue
            view.remaining = remaining
            view.limit = _int(headers.get(f"anthropic-ratelimit-{kind}-limit"))
            reset = _epoch(headers.get(f"anthropic-ratelimit-{kind}-reset"))
            view.reset_at = now + max(0.0, reset - wall) if reset is not None else 0.0


def cooling_reason(exc: UpstreamError, *, started: bool) -> str | None:
    """Why a failed call cools its deployment, or None when it does not: a request the
    upstream refused is the request's fault, a cut mid-answer the connection's."""
    if exc.error_type == "overloaded_error":
        return "overloaded"  # a 529, or an overloaded_error event mid-stream
    if started:
        return None
    if isinstance(exc, UpstreamIncomplete):
        return "connect"  # no answer at all: refused, reset, timed out
    if exc.status == 429:
        return "rate_limited"
    if exc.status in (401, 403):
        return "auth"  # the deployment's key is refused: every call would be
    if exc.status >= 500:
        return "server_error"
    return None


def backoff(failures: int, base: float, ceiling: float) -> float:
    return float(min(base * 2.0 ** max(0, failures - 1), ceiling))


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _epoch(value: str | None) -> float | None:
    """An RFC 3339 time (Claude's `-reset` headers) as epoch seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
