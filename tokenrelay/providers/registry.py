"""Providers and stores picked by name, imported only when chosen."""

from __future__ import annotations

from tokenrelay.auth.tickets import MemoryTickets, TicketStore
from tokenrelay.config import Settings
from tokenrelay.providers.base import Provider
from tokenrelay.streams.log import StreamLog


def build_provider(settings: Settings) -> Provider:
    name = settings.resolved_provider()
    if name == "simulator":
        from tokenrelay.providers.simulator import SimulatorProvider

        return SimulatorProvider(ttft_ms=settings.simulator_ttft_ms, tps=settings.simulator_tps)
    from tokenrelay.providers.anthropic import AnthropicProvider

    return AnthropicProvider.from_settings(settings)


def build_store(settings: Settings) -> StreamLog:
    if settings.store == "memory":
        from tokenrelay.streams.memory import MemoryLog

        return MemoryLog(stream_ttl=settings.stream_ttl)
    if settings.store.startswith(("redis://", "rediss://", "unix://")):
        from tokenrelay.streams.redis import RedisLog

        return RedisLog(
            settings.store,
            stream_ttl=settings.stream_ttl,
            max_connections=settings.redis_max_connections,
        )
    raise ValueError(f"Unknown store {settings.store!r}: use 'memory' or a redis:// URL")


def build_tickets(settings: Settings, store: StreamLog) -> TicketStore:
    """Tickets live beside the stream logs: in Redis when the logs are, so that an
    `EventSource` reconnect may land on any instance."""
    if settings.store == "memory":
        return MemoryTickets()
    from tokenrelay.auth.tickets import RedisTickets
    from tokenrelay.streams.redis import RedisLog

    assert isinstance(store, RedisLog)
    return RedisTickets(store.client)
