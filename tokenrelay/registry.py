"""Implementations picked by name, each imported only when chosen.

A gateway on the memory store with the simulator never imports redis-py or the
anthropic SDK (~60 MiB between them). Add an implementation by adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenrelay.admission.budgets import SpendCounters
from tokenrelay.admission.gate import Caps, Gate
from tokenrelay.admission.rate_limits import Counters
from tokenrelay.auth.tickets import TicketStore
from tokenrelay.config import Settings
from tokenrelay.providers.base import Provider
from tokenrelay.streams.cache import ResponseCache
from tokenrelay.streams.cluster import Cluster
from tokenrelay.streams.log import StreamLog
from tokenrelay.upstreams.config import DeploymentConfig, PoolConfig
from tokenrelay.upstreams.pool import Observe, Pool
from tokenrelay.upstreams.shared import SharedHealth
from tokenrelay.usage.record import UsageSink

if TYPE_CHECKING:
    from tokenrelay.providers.anthropic import AnthropicProvider
    from tokenrelay.providers.anthropic_http import AnthropicHttpProvider


@dataclass(frozen=True, slots=True)
class Store:
    """Where streams live, and what is shared with other instances through it."""

    log: StreamLog
    cluster: Cluster
    # Tickets live beside the logs (in Redis when they are), so that an EventSource
    # reconnect may land on any instance; so do the rate-limit counters, the budgets'
    # spending and the gate, so that a limit, a budget and a cap hold across instances.
    tickets: TicketStore
    rate_counters: Counters
    spend_counters: SpendCounters
    cache: ResponseCache
    gate: Gate
    # The upstream deployments' cool-downs and probes, so that instances back off together.
    upstream_health: SharedHealth

    async def aclose(self) -> None:
        await self.gate.aclose()
        await self.cluster.aclose()
        await self.log.aclose()


def _simulator(settings: Settings, deployment: DeploymentConfig, observe: Observe) -> Provider:
    from tokenrelay.providers.simulator import SimulatorProvider

    return SimulatorProvider(ttft_ms=settings.simulator_ttft_ms, tps=settings.simulator_tps)


def _anthropic(settings: Settings, deployment: DeploymentConfig, observe: Observe) -> Provider:
    if deployment.api_key is None:
        raise ValueError("The anthropic provider needs ANTHROPIC_API_KEY")
    kind: type[AnthropicHttpProvider | AnthropicProvider]
    if settings.upstream_client == "sdk":
        from tokenrelay.providers.anthropic import AnthropicProvider as kind
    else:  # the SDK's 50 MiB of modules stay unloaded
        from tokenrelay.providers.anthropic_http import AnthropicHttpProvider as kind
    return kind(
        api_key=deployment.api_key,
        base_url=deployment.base_url,
        connect_timeout=settings.connect_timeout,
        stall_timeout=settings.stall_timeout,
        observe=observe,
    )


def _memory(settings: Settings) -> Store:
    from tokenrelay.admission.budgets import MemorySpend
    from tokenrelay.admission.gate import MemoryGate
    from tokenrelay.admission.rate_limits import MemoryCounters
    from tokenrelay.auth.tickets import MemoryTickets
    from tokenrelay.streams.cache import MemoryCache
    from tokenrelay.streams.cluster import LocalCluster
    from tokenrelay.streams.memory import MemoryLog

    log = MemoryLog(stream_ttl=settings.stream_ttl)
    cache = MemoryCache(settings.cache_max_bytes)
    from tokenrelay.upstreams.shared import LocalHealth

    gate = MemoryGate(Caps.of(settings))
    return Store(log, LocalCluster(), MemoryTickets(), MemoryCounters(), MemorySpend(), cache,
                 gate, LocalHealth())  # fmt: skip


def _redis(settings: Settings) -> Store:
    from tokenrelay.admission.budgets import RedisSpend
    from tokenrelay.admission.rate_limits import RedisCounters
    from tokenrelay.admission.redis_gate import RedisGate
    from tokenrelay.auth.tickets import RedisTickets
    from tokenrelay.streams.cache import RedisCache
    from tokenrelay.streams.redis import RedisLog
    from tokenrelay.streams.redis_cluster import RedisCluster
    from tokenrelay.upstreams.redis_health import RedisHealth

    log = RedisLog(
        settings.store,
        stream_ttl=settings.stream_ttl,
        max_connections=settings.redis_max_connections,
    )
    client = log.client
    return Store(
        log,
        RedisCluster(log),
        RedisTickets(client),
        RedisCounters(client),
        RedisSpend(client),
        RedisCache(client),
        RedisGate(client, log.blocking_client, Caps.of(settings)),
        RedisHealth(client, log.blocking_client),
    )


# A deployment's provider, by its kind.
PROVIDERS: dict[str, Callable[[Settings, DeploymentConfig, Observe], Provider]] = {
    "simulator": _simulator,
    "anthropic": _anthropic,
}
STORES: dict[str, Callable[[Settings], Store]] = {"memory": _memory, "redis": _redis}


def store_kind(store: str) -> str:
    if store == "memory":
        return "memory"
    if store.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ValueError(f"Unknown store {store!r}: use 'memory' or a redis:// URL")


def _no_usage(settings: Settings) -> UsageSink:
    from tokenrelay.usage.record import NoUsage

    return NoUsage()


def _sql_ledger(settings: Settings) -> UsageSink:
    # SQLAlchemy and a driver (~10 MiB): only for the gateways that keep a ledger.
    from tokenrelay.usage.ledger import SqlLedger

    return SqlLedger(settings.database_url, flush_interval=settings.ledger_flush_interval)


# Where stream records go.
USAGE_SINKS: dict[str, Callable[[Settings], UsageSink]] = {"off": _no_usage, "sql": _sql_ledger}


def build_usage(settings: Settings) -> UsageSink:
    return USAGE_SINKS["off" if settings.database_url == "off" else "sql"](settings)


def build_pool(settings: Settings, config: PoolConfig, store: Store) -> Pool:
    def provider_for(deployment: DeploymentConfig, observe: Observe) -> Provider:
        return PROVIDERS[deployment.kind](settings, deployment, observe)

    return Pool(config, provider_for, shared=store.upstream_health, counters=store.rate_counters)


def build_store(settings: Settings) -> Store:
    return STORES[store_kind(settings.store)](settings)
