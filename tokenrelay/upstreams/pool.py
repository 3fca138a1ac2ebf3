"""The upstream pool: which deployment, and which model, each attempt goes to.

The producer asks once per attempt (never per token): `Route.choose` picks among the
deployments that serve the model and can take a call now, by smooth weighted
round-robin over each one's weight × rate-limit headroom ÷ (1 + calls in flight), so
calls spread by weight when all is well and lean away from the loaded and the nearly
spent. A stream's route avoids the deployments that already failed it (a retry
moves, and so does a continuation, to the same model). When no deployment of the
model can take it, the model's fallbacks are tried in order, before the answer's
first token only (unless `fallback_mid_answer`). The attempt's `Choice` then reports
how the call went, which is what cools deployments down and brings them back
(`health`), shared across instances (`shared`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenrelay.admission.rate_limits import Counters
from tokenrelay.errors import UpstreamError
from tokenrelay.observability import telemetry
from tokenrelay.observability.log import log_event
from tokenrelay.providers.base import GenerationRequest, Provider
from tokenrelay.upstreams.config import DeploymentConfig, Kind, PoolConfig
from tokenrelay.upstreams.health import Health, backoff, cooling_reason
from tokenrelay.upstreams.shared import LocalHealth, SharedHealth

log = logging.getLogger("tokenrelay.upstreams")

# How long one instance's claim on a deployment's probe call lasts: the verdict comes
# with the call's first event, well within this, or the claim lapses for another.
PROBE_S = 15.0
# Added to a wait for a deployment to be back: uvloop's timers are milliseconds, and may
# wake a waiter just before the moment it waited for, to find the deployment still cool.
WAKE_MARGIN_S = 0.005
# How often a wait for a probe's verdict looks again.
PROBE_POLL_S = 0.25


# Makes a deployment's provider; `observe` takes every answer's headers (its
# rate-limit figures).
Observe = Callable[[Mapping[str, str]], None]
ProviderFactory = Callable[[DeploymentConfig, Observe], Provider]


class NoDeployment(UpstreamError):
    """No deployment can take the model now: every one is cooling, probing or full.
    Nothing was called; `retry_after` says when one can."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(
            message, status=529, error_type="overloaded_error", retryable=True,
            retry_after=retry_after,
        )  # fmt: skip


@dataclass(slots=True)
class Deployment:
    config: DeploymentConfig
    provider: Provider
    health: Health

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """One deployment as `tokenrelay upstreams` and `GET /api/upstreams` show it."""

    name: str
    kind: str
    base_url: str | None
    key: str  # where the key comes from (env:NAME, file:PATH): never the key
    weight: float
    models: list[str]  # empty: every model
    state: str  # healthy | cooling | probing | full
    cooling_until: float | None  # epoch seconds
    reason: str | None
    failures: int
    in_flight: int
    calls_1m: int
    errors_1m: int
    error_rate_1m: float
    requests_remaining: int | None
    requests_limit: int | None
    tokens_remaining: int | None
    tokens_limit: int | None
    rpm: int
    tpm: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Choice:
    """One attempt's deployment and model. The producer calls `opened` when the
    upstream's answer starts, `failed` when the call fails, and `close` always."""

    __slots__ = (
        "_closed", "_pool", "_verdict", "answered", "deployment", "failure", "model", "probe",
    )  # fmt: skip

    def __init__(self, pool: Pool, deployment: Deployment, model: str, probe: bool) -> None:
        self._pool = pool
        self.deployment = deployment
        self.model = model
        self.probe = probe
        self._verdict = False
        self._closed = False
        self.answered = False  # the upstream's answer started (before any failure)
        self.failure = False

    @property
    def provider(self) -> Provider:
        return self.deployment.provider

    @property
    def name(self) -> str:
        return self.deployment.config.name

    def opened(self) -> None:
        if not self._verdict:
            self._verdict = self.answered = True
            self._pool._opened(self)

    async def failed(self, exc: UpstreamError, *, started: bool) -> None:
        self._verdict = self.failure = True
        await self._pool._failed(self, exc, started)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._closed(self)


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        provider_for: ProviderFactory,
        *,
        shared: SharedHealth | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.deployments = []
        for d in config.deployments:
            health = Health()
            observe = functools.partial(_observe, health, clock)
            self.deployments.append(Deployment(d, provider_for(d, observe), health))
        self._by_name = {d.name: d for d in self.deployments}
        self._shared: SharedHealth = shared or LocalHealth()
        self._counters = counters  # the gateway's own rpm/tpm per deployment
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.deployments]

    async def open(self) -> None:
        await self._shared.open(self.names, self._heard)

    async def aclose(self) -> None:
        await self._shared.aclose()
        for task in list(self._tasks):
            task.cancel()
        for deployment in self.deployments:
            await deployment.provider.aclose()

    @classmethod
    def single(
        cls, provider: Provider, *, cooldown_base_s: float = 0.5, cooldown_max_s: float = 8.0
    ) -> Pool:
        """A pool of one deployment around a provider made elsewhere (tests, tools)."""
        kind: Kind = "simulator" if provider.name == "simulator" else "anthropic"
        only = DeploymentConfig("default", kind, None, "", None)
        config = PoolConfig((only,), cooldown_base_s=cooldown_base_s, cooldown_max_s=cooldown_max_s)
        return cls(config, lambda _config, _observe: provider)

    def route(self, *, fallback: bool = True, restartable: bool = True) -> Route:
        return Route(self, fallback=fallback, restartable=restartable)

    def chain(self, model: str, fallback: bool = True) -> list[str]:
        """The models that may answer a request for `model`, in order."""
        return [model, *self.config.fallbacks.get(model, ())] if fallback else [model]

    def serves(self, model: str, fallback: bool = True) -> bool:
        """Whether any deployment serves `model` (or, with `fallback`, one of its fallbacks)."""
        chain = self.chain(model, fallback)
        return any(d.config.serves(m) for m in chain for d in self.deployments)

    @property
    def counts_tokens(self) -> bool:
        """Whether a deployment has a tokens-per-minute cap (an attempt then says how
        many it may use)."""
        return any(d.config.tpm for d in self.deployments)

    def retry_in(self, model: str, fallback: bool = True) -> float | None:
        """None when a deployment can take `model` (or a fallback) now; else the seconds
        until one can, as well as this instance knows."""
        now = self._clock()
        soonest = math.inf
        for m in self.chain(model, fallback):
            for d in self.deployments:
                if not d.config.serves(m):
                    continue
                if self._ready(d, now):
                    return None
                soonest = min(soonest, self._ready_at(d.health, now) - now)
        return max(0.05, soonest + WAKE_MARGIN_S) if soonest != math.inf else None

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Counted by a deployment that serves the model, healthy ones first."""
        now = self._clock()
        serving = [d for d in self.deployments if d.config.serves(request.model)]
        serving.sort(key=lambda d: not self._ready(d, now))
        if not serving:
            raise NoDeployment(f"No upstream deployment serves {request.model}", 1.0)
        return await serving[0].provider.count_tokens(request)

    def snapshot(self) -> list[DeploymentState]:
        now, wall = self._clock(), time.time()
        out = []
        for d in self.deployments:
            h, c = d.health, d.config
            state = h.state(now)
            calls, errors = h.error_rate(now)
            cooling = state == "cooling"
            out.append(
                DeploymentState(
                    name=c.name, kind=c.kind, base_url=c.base_url, key=c.key_source,
                    weight=c.weight, models=sorted(c.models), state=state,
                    cooling_until=wall + (h.cooling_until - now) if cooling else None,
                    reason=h.reason or None if state != "healthy" else None,
                    failures=h.failures, in_flight=h.in_flight, calls_1m=calls,
                    errors_1m=errors, error_rate_1m=round(errors / calls, 4) if calls else 0.0,
                    requests_remaining=h.requests.remaining, requests_limit=h.requests.limit,
                    tokens_remaining=h.tokens.remaining, tokens_limit=h.tokens.limit,
                    rpm=c.rpm, tpm=c.tpm,
                )
            )  # fmt: skip
        return out

    # -- picking ----------------------------------------------------------------------

    def _ready(self, d: Deployment, now: float) -> bool:
        h = d.health
        if now < h.cooling_until or now < h.full_until or h.spent_until(now) > now:
            return False
        if h.failures:  # a probe is due: only one call at a time finds out
            return not h.probing and now >= h.probe_elsewhere_until
        return True

    def _ready_at(self, h: Health, now: float) -> float:
        at = max(h.cooling_until, h.full_until, h.spent_until(now))
        # Else a probe is under way (here, or claimed elsewhere): its verdict comes with
        # its first event, so whoever waits for it looks again shortly.
        return at if at > now else now + PROBE_POLL_S

    async def _pick(self, model: str, avoid: set[str], tokens: int, now: float) -> Choice | None:
        ready = [d for d in self.deployments if d.config.serves(model) and self._ready(d, now)]
        candidates = [d for d in ready if d.name not in avoid] or ready
        while candidates:
            d = _smooth_weighted(candidates, now)
            h = d.health
            probe = h.failures > 0
            if probe and not await self._shared.claim_probe(d.name, PROBE_S):
                h.probe_elsewhere_until = now + PROBE_S
                candidates.remove(d)
                continue
            if (d.config.rpm or d.config.tpm) and not await self._take(d, tokens):
                h.full_until = now + 60 - time.time() % 60  # the minute's end
                candidates.remove(d)
                continue
            if probe:
                h.probing = True
                log_event(log, "upstream_probe", deployment=d.name, failures=h.failures)
            h.in_flight += 1
            return Choice(self, d, model, probe)
        return None

    async def _take(self, d: Deployment, tokens: int) -> bool:
        if self._counters is None:
            return True
        window = int(time.time() // 60)
        taken, _, _ = await self._counters.take(
            f"upstream:{d.name}", window, (1, d.config.rpm), (tokens, d.config.tpm)
        )
        return taken

    # -- verdicts -----------------------------------------------------------------------

    def _opened(self, choice: Choice) -> None:
        d = choice.deployment
        h = d.health
        h.note(self._clock(), False)
        if h.failures or choice.probe:
            h.failures, h.backoffs, h.reason, h.probing = 0, 0, "", False
            h.cooling_until = h.probe_elsewhere_until = 0.0
            telemetry.upstream_probe(d.name, "ok")
            log_event(log, "upstream_recovered", deployment=d.name)
            self._spawn(self._shared.recovered(d.name))

    async def _failed(self, choice: Choice, exc: UpstreamError, started: bool) -> None:
        d = choice.deployment
        h = d.health
        now = self._clock()
        h.note(now, True)
        if choice.probe:
            h.probing = False
        reason = cooling_reason(exc, started=started)
        if reason is None:
            return
        if choice.probe:
            telemetry.upstream_probe(d.name, "failed")
        h.failures += 1
        base, ceiling = self.config.cooldown_base_s, self.config.cooldown_max_s
        if reason == "auth":
            seconds = ceiling
        elif exc.retry_after:
            seconds = min(exc.retry_after, ceiling)
        else:
            h.backoffs += 1
            seconds = backoff(h.backoffs, base, ceiling)
        self._cool(d, seconds, reason, h.failures, now)
        await self._shared.cooled(d.name, seconds, reason, h.failures)

    def _closed(self, choice: Choice) -> None:
        d = choice.deployment
        d.health.in_flight -= 1
        if choice.failure:
            outcome = "cut" if choice.answered else "error"
        elif choice.answered:
            outcome = "ok"
        else:  # cancelled before it knew: another call may probe
            outcome = "cancelled"
            if choice.probe:
                d.health.probing = False
                self._spawn(self._shared.release_probe(d.name))
        telemetry.upstream_attempt(d.name, outcome)

    def _cool(self, d: Deployment, seconds: float, reason: str, failures: int, now: float) -> None:
        h = d.health
        h.cooling_until, h.reason, h.failures = now + seconds, reason, failures
        telemetry.upstream_cooldown(d.name, reason)
        log_event(
            log, "upstream_cooldown", level=logging.WARNING, deployment=d.name, reason=reason,
            seconds=round(seconds, 3), failures=failures,
        )  # fmt: skip

    def _heard(self, name: str, seconds: float, reason: str, failures: int) -> None:
        """Another instance's verdict (or ours, echoed back)."""
        d = self._by_name.get(name)
        if d is None:
            return
        h = d.health
        now = self._clock()
        if seconds <= 0:
            if h.failures:
                h.failures, h.backoffs, h.reason, h.cooling_until = 0, 0, "", 0.0
                h.probe_elsewhere_until = 0.0
            return
        until = now + seconds
        if until > h.cooling_until + 0.25 or failures > h.failures:  # news, not an echo
            h.cooling_until, h.reason, h.failures = max(until, h.cooling_until), reason, failures
            h.probe_elsewhere_until = 0.0

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Route:
    """One stream's way through the pool, attempt after attempt."""

    __slots__ = ("_models", "_pool", "avoid", "fallback", "restartable")

    def __init__(self, pool: Pool, *, fallback: bool, restartable: bool) -> None:
        self._pool = pool
        self.fallback = fallback
        self.restartable = restartable
        self.avoid: set[str] = set()  # deployments that failed this stream
        self._models: list[str] = []  # the models the last choice could go to, in order

    async def choose(
        self, requested: str, current: str, *, started: bool, tokens: int = 0
    ) -> Choice:
        """The next attempt's deployment and model. `current`: the model answering so
        far; once the answer has `started`, another model only with
        `fallback_mid_answer` (the producer then restarts the answer)."""
        pool = self._pool
        if not started:
            models = pool.chain(requested, self.fallback)
        elif self.fallback and self.restartable and pool.config.fallback_mid_answer:
            models = [current, *(m for m in pool.chain(requested) if m != current)]
        else:
            models = [current]
        self._models = models
        now = pool._clock()
        for model in models:
            choice = await pool._pick(model, self.avoid, tokens, now)
            if choice is not None:
                return choice
        wait = _min_retry(pool, models)
        raise NoDeployment(
            f"No upstream deployment can take {requested} now (cooling down or at its rate limit)",
            wait,
        )

    @property
    def counts_tokens(self) -> bool:
        return self._pool.counts_tokens

    def failed_on(self, choice: Choice) -> None:
        self.avoid.add(choice.name)

    def elsewhere(self, model: str) -> bool:
        """Whether a deployment this stream has not failed on can take `model` now, or
        a fallback the next choice may go to (a retry then goes there at once, with no
        back-off: not after the retry-after of the deployment that failed it)."""
        pool = self._pool
        now = pool._clock()
        models = [model, *(m for m in self._models if m != model)]
        return any(
            d.config.serves(m) and d.name not in self.avoid and pool._ready(d, now)
            for m in models
            for d in pool.deployments
        )


def _observe(health: Health, clock: Callable[[], float], headers: Mapping[str, str]) -> None:
    health.observe(headers, clock())


def _min_retry(pool: Pool, models: Sequence[str]) -> float:
    waits = [pool.retry_in(m, fallback=False) for m in models]
    known = [w for w in waits if w is not None]
    return min(known) if known else 0.05


def _smooth_weighted(candidates: list[Deployment], now: float) -> Deployment:
    total = 0.0
    best: Deployment | None = None
    for d in candidates:
        h = d.health
        effective = d.config.weight * max(0.05, h.headroom(now)) / (1 + h.in_flight)
        h.current += effective
        total += effective
        if best is None or h.current > best.health.current:
            best = d
    assert best is not None
    best.health.current -= total
    return best
