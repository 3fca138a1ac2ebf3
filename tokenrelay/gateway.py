"""The running gateway's parts, built once in the lifespan and handed to every route
through one dependency (`routes.deps`), instead of untyped `app.state` lookups."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenrelay.admission.budgets import Budget, Budgets
from tokenrelay.admission.rate_limits import Limit, RateLimits
from tokenrelay.auth.api_keys import ApiKeyAuth
from tokenrelay.auth.base import Authenticator
from tokenrelay.auth.factory import build_authenticator
from tokenrelay.auth.tickets import MemoryTickets, TicketStore
from tokenrelay.config import Settings
from tokenrelay.observability.ops import OpsMonitor
from tokenrelay.observability.tracing import OFF, Tracing, setup
from tokenrelay.pricing import ModelTable
from tokenrelay.registry import build_pool, build_store, build_usage
from tokenrelay.streams.cache import CachePolicy
from tokenrelay.streams.coalesce import Coalescer
from tokenrelay.streams.manager import StreamManager, StreamTimings
from tokenrelay.streams.producer import RetryPolicy
from tokenrelay.upstreams import config as upstreams_config
from tokenrelay.upstreams.config import PoolConfig
from tokenrelay.usage.report import Ledger
from tokenrelay.validation import Limits, RequestValidator

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from tokenrelay.batches.service import Batches
    from tokenrelay.conversations.service import Conversations
    from tokenrelay.streams.log import StreamLog
    from tokenrelay.upstreams.pool import Pool


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the settings make without I/O: built, and so checked, at start-up."""

    models: ModelTable
    validator: RequestValidator
    authenticator: Authenticator
    upstreams: PoolConfig


def prepare(settings: Settings) -> Prepared:
    """Raises (ValueError, OSError, UnsafeConfiguration) for settings that cannot work."""
    models = ModelTable.from_file(settings.prices_file)
    validator = RequestValidator(
        Limits(
            max_prompt_chars=settings.max_prompt_chars,
            max_messages=settings.max_messages,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_ceiling=settings.max_tokens_ceiling,
        ),
        models,
        settings.model,
        screen=settings.prompt_screen,
    )
    upstreams = upstreams_config.from_settings(settings)
    upstreams_config.check_models(upstreams, models)
    return Prepared(models, validator, build_authenticator(settings), upstreams)


@dataclass(frozen=True, slots=True)
class Gateway:
    settings: Settings
    models: ModelTable
    manager: StreamManager
    validator: RequestValidator
    authenticator: Authenticator
    tickets: TicketStore
    rate_limits: RateLimits
    budgets: Budgets
    ledger: Ledger | None = None  # None: TOKENRELAY_DATABASE_URL=off
    conversations: Conversations | None = None  # in the ledger's database; None without one
    batches: Batches | None = None  # in the ledger's database; None without one
    ops: OpsMonitor | None = None  # what the operations page shows
    # The operations feed's tickets: this instance's own, since the feed describes it.
    ops_tickets: TicketStore = field(default_factory=MemoryTickets)
    tracing: Tracing = OFF


def conversations_of(
    settings: Settings, ledger: Ledger | None, log: StreamLog
) -> Conversations | None:
    """The stored conversations, in the ledger's database (on its engine); None
    without one. Imported only then, like the ledger."""
    from tokenrelay.conversations.history import Fit
    from tokenrelay.conversations.service import Conversations
    from tokenrelay.conversations.store import ConversationStore
    from tokenrelay.usage.ledger import SqlLedger

    if not isinstance(ledger, SqlLedger):
        return None
    fit = Fit(
        settings.conversation_max_input_tokens, settings.max_prompt_chars, settings.max_messages
    )
    return Conversations(ConversationStore(ledger.engine), log, fit)


def batches_of(ledger: Ledger | None, pool: Pool, models: ModelTable) -> Batches | None:
    """The batches, in the ledger's database (on its engine); None without one."""
    from tokenrelay.batches.service import Batches
    from tokenrelay.batches.store import BatchStore
    from tokenrelay.usage.ledger import SqlLedger

    if not isinstance(ledger, SqlLedger):
        return None
    return Batches(BatchStore(ledger.engine), pool, models)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        retries=settings.upstream_retries,
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        retry_after_ceiling=settings.retry_after_ceiling,
        continuations=settings.continuation_attempts,
    )


def rate_limits_of(settings: Settings) -> tuple[Limit, dict[str, Limit]]:
    """The default limit, and the principals whose limit differs."""
    default = Limit(settings.rate_limit_rpm, settings.rate_limit_tpm)
    overrides = {
        principal: Limit(
            int(limit.get("rpm", default.requests)), int(limit.get("tpm", default.tokens))
        )
        for principal, limit in settings.rate_limits.items()
    }
    return default, overrides


def budgets_of(settings: Settings) -> tuple[Budget, dict[str, Budget]]:
    default = Budget(settings.budget_daily_usd, settings.budget_monthly_usd)
    overrides = {
        principal: Budget(
            float(b.get("daily", default.daily)), float(b.get("monthly", default.monthly))
        )
        for principal, b in settings.budgets.items()
    }
    return default, overrides


def key_limits_of(
    authenticator: Authenticator, settings: Settings
) -> Callable[[str], Limit | None] | None:
    """The limits an API key's line sets for its user (`rpm=`, `tpm=`), over the
    settings'; a limit the line does not name stays as the settings have it."""
    if not isinstance(authenticator, ApiKeyAuth):
        return None
    default, overrides = rate_limits_of(settings)
    limits_for = authenticator.limits_for

    def limit(principal: str) -> Limit | None:
        own = limits_for(principal)
        if own is None:
            return None
        base = overrides.get(principal, default)
        return Limit(own.get("rpm", base.requests), own.get("tpm", base.tokens))

    return limit


def key_budgets_of(
    authenticator: Authenticator, settings: Settings
) -> Callable[[str], Budget | None] | None:
    """The budgets an API key's line sets for its user (`daily_usd=`, `monthly_usd=`),
    over the settings'; a budget the line does not name stays as the settings have it."""
    if not isinstance(authenticator, ApiKeyAuth):
        return None
    default, overrides = budgets_of(settings)
    limits_for = authenticator.limits_for

    def budget(principal: str) -> Budget | None:
        own = limits_for(principal)
        if own is None or not own.keys() & {"daily_usd", "monthly_usd"}:
            return None
        base = overrides.get(principal, default)
        daily, monthly = own.get("daily_usd"), own.get("monthly_usd")
        return Budget(
            base.daily if daily is None else daily / 1e6,
            base.monthly if monthly is None else monthly / 1e6,
        )

    return budget


@asynccontextmanager
async def open_gateway(
    settings: Settings, prepared: Prepared, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[Gateway]:
    """Store, upstream pool and manager, opened in order and closed in reverse: the
    manager's producers end before the pool and the store they use close.
    Spans go to `tracer_provider` when one is given, else as `settings.tracing` says."""
    async with AsyncExitStack() as stack:
        tracing = setup(settings.tracing, tracer_provider)
        stack.callback(tracing.shutdown)  # last: the spans of the streams ended first
        store = build_store(settings)
        stack.push_async_callback(store.aclose)
        pool = build_pool(settings, prepared.upstreams, store)
        stack.push_async_callback(pool.aclose)
        await pool.open()
        usage = build_usage(settings)
        # Closed after the manager, so the records of the streams it ends are written.
        stack.push_async_callback(usage.aclose)
        ledger = usage if isinstance(usage, Ledger) else None
        if ledger is not None:
            await ledger.open()
        budgets = Budgets(
            store.spend_counters,
            *budgets_of(settings),
            extra_overrides=key_budgets_of(prepared.authenticator, settings),
        )
        manager = StreamManager(
            log=store.log,
            cluster=store.cluster,
            upstreams=pool,
            models=prepared.models,
            retry=retry_policy(settings),
            timings=StreamTimings(
                heartbeat_interval=settings.heartbeat_interval,
                abandon_after=settings.abandon_after,
            ),
            usage=usage,
            coalescer=Coalescer(settings.coalesce, guest_ttl=settings.stream_ttl),
            gate=store.gate,
            cache=store.cache,
            cache_policy=CachePolicy(
                ttl=settings.cache_ttl, scope=settings.cache_scope, sampled=settings.cache_sampled
            ),
            tracing=tracing,
            budgets=budgets,
            upstream_wait=settings.upstream_wait,
        )
        conversations = conversations_of(settings, ledger, manager.log)
        if conversations is not None:
            # Closed after the manager: the answers its close ends are stored first.
            stack.push_async_callback(conversations.aclose)
        stack.push_async_callback(manager.aclose)
        await manager.open()
        batches = batches_of(ledger, pool, prepared.models)
        if batches is not None:
            batches.start()  # the refresher: closed before the pool and the ledger
            stack.push_async_callback(batches.aclose)
        ops = OpsMonitor(manager, ledger)
        ops.start()
        stack.push_async_callback(ops.aclose)  # first: it reads the manager and the ledger
        yield Gateway(
            settings,
            prepared.models,
            manager,
            prepared.validator,
            prepared.authenticator,
            store.tickets,
            RateLimits(
                store.rate_counters,
                *rate_limits_of(settings),
                extra_overrides=key_limits_of(prepared.authenticator, settings),
            ),
            budgets,
            ledger=ledger,
            conversations=conversations,
            batches=batches,
            ops=ops,
            tracing=tracing,
        )
