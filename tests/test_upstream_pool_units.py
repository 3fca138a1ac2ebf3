"""The pool's rules at unit level, on a clock the test moves: what a wait for a cooling
deployment is, and how a spent rate limit counts once its window has reset. (The
behaviour over real sockets is tests/test_upstream_pool*.py's.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tokenrelay.upstreams.config import DeploymentConfig, PoolConfig
from tokenrelay.upstreams.pool import Pool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(*names: str, clock: Any = time.monotonic) -> Pool:
    config = PoolConfig(tuple(DeploymentConfig(n, "simulator", None, "", None) for n in names))
    return Pool(config, lambda _deployment, _observe: None, clock=clock)  # type: ignore[arg-type,return-value]


def test_the_wait_for_a_cooling_pool_ends_after_its_cool_down() -> None:
    """uvloop's timers are milliseconds: a waiter woken a little early would find the
    deployment still cooling and wait again, so the wait has a margin."""
    clock = Clock()
    pool = pool_of("east", "west", clock=clock)
    east, west = pool.deployments
    pool._cool(east, 0.5, "overloaded", 1, clock.now)
    pool._cool(west, 0.8, "overloaded", 1, clock.now)
    wait = pool.retry_in("claude-haiku-4-5")
    assert wait is not None and 0.5 < wait <= 0.51
    clock.now += wait - 0.001  # woken a millisecond early
    assert pool.retry_in("claude-haiku-4-5") is None  # east can take it


@pytest.mark.parametrize(("now", "weight"), [(1000.0, 0.05), (1004.0, 1.0)])
def test_a_spent_rate_limit_weighs_nothing_until_its_window_resets(
    now: float, weight: float
) -> None:
    clock = Clock()
    pool = pool_of("east", clock=clock)
    health = pool.deployments[0].health
    health.requests.limit, health.requests.remaining = 2, 0
    health.requests.reset_at = 1003.0
    assert max(0.05, health.headroom(now)) == weight


def test_a_wait_for_a_probes_verdict_is_short() -> None:
    """While a probe call is under way, the others look again shortly: its verdict
    comes with its first event, long before the probe's claim would lapse."""
    clock = Clock()
    pool = pool_of("east", clock=clock)
    east = pool.deployments[0]
    pool._cool(east, 1.0, "overloaded", 1, clock.now)
    clock.now += 1.5
    east.health.probing = True
    wait = pool.retry_in("claude-haiku-4-5")
    assert wait is not None and wait <= 0.26


def test_a_model_no_deployment_serves_is_known_to_be_unserved() -> None:
    config = PoolConfig(
        (
            DeploymentConfig(
                "east", "simulator", None, "", None, models=frozenset({"claude-haiku-4-5"})
            ),
        ),
        {"claude-sonnet-4-6": ("claude-haiku-4-5",)},
    )
    pool = Pool(config, lambda _deployment, _observe: None)  # type: ignore[arg-type,return-value]
    assert pool.serves("claude-haiku-4-5")
    assert pool.serves("claude-sonnet-4-6")  # by its fallback
    assert not pool.serves("claude-sonnet-4-6", fallback=False)
    assert not pool.serves("claude-opus-4-5")
