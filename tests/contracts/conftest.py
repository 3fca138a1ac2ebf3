"""Contract suites: the same tests over every implementation of a seam.

`provider` is parametrized over the implementations of `Provider`: the simulator
in-process, and `anthropic` over a real socket to a `tokenrelay simulate` process, by
its own client and (`anthropic-sdk`) through the official SDK, so any difference
between them fails a test. `simulator_url` is
that process, started once per session; a module that needs the simulator as an
upstream (a gateway, a producer) may use it too. It counts attempts per request
(`[[sim:fail_times=K]]`) for the whole session, so a test that relies on the count
asks a prompt no other test asks.

`make_manager` builds `StreamManager`s in-process over that `provider` and over each
store's log (`memory`, and `redis` on a throwaway redis-server shared by the session),
so a test that takes it runs six times: every provider on every store, each with the
store's own cluster (on Redis: leases, takeover scans and the cancel subscription run
as in production, so a stream adopted twice or a lease lost would show here).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from tests.support import Redis, free_port, redis_server, spawn
from tokenrelay.config import Settings
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.anthropic import AnthropicProvider
from tokenrelay.providers.anthropic_http import AnthropicHttpProvider
from tokenrelay.providers.base import Provider
from tokenrelay.providers.simulator import SimulatorProvider
from tokenrelay.registry import build_store
from tokenrelay.streams.manager import StreamManager, StreamTimings
from tokenrelay.streams.producer import RetryPolicy
from tokenrelay.upstreams.pool import Pool

# The in-process simulator, and the anthropic provider's two paths to `tokenrelay
# simulate`: the gateway's own client (the default) and the official SDK.
PROVIDERS = ("simulator", "anthropic", "anthropic-sdk")
STORES = ("memory", "redis")
# Short, so that `[[sim:stall_after=N]]` costs a test one second, yet far above the
# simulator's own latency (it sends every delta at once with --tps 0).
STALL_TIMEOUT = 1.0
# Quick backoff, so retries cost the tests little (a `retry-after` is still honoured).
RETRY = RetryPolicy(retries=2, base_delay=0.01, max_delay=0.05, continuations=3)
TIMINGS = StreamTimings(heartbeat_interval=0.5, abandon_after=60)

MakeManager = Callable[..., Awaitable[StreamManager]]


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tokenrelay simulate` with no pacing on a free port, for the whole session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("simulator") / "simulate.log"
    args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"]
    with spawn(args, f"{url}/healthz", log_path=log_path) as proc:
        yield url
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (so the exit
    # status tells a supervisor why it ended): that, not 0, is a clean exit here.
    assert proc.returncode == -signal.SIGTERM, log_path.read_text()


@contextlib.asynccontextmanager
async def open_provider(name: str, simulator_url: str) -> AsyncIterator[Provider]:
    """A fresh provider of the given implementation; closed when the block ends."""
    provider: Provider
    if name == "simulator":
        provider = SimulatorProvider(ttft_ms=0, tps=0)
    elif name == "anthropic":
        provider = AnthropicHttpProvider(
            api_key="sk-test", base_url=simulator_url, stall_timeout=STALL_TIMEOUT
        )
    else:
        provider = AnthropicProvider(
            api_key="sk-test", base_url=simulator_url, stall_timeout=STALL_TIMEOUT
        )
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture(params=PROVIDERS)
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    # Only the anthropic provider needs the simulator process.
    url = request.getfixturevalue("simulator_url") if request.param != "simulator" else ""
    async with open_provider(request.param, url) as p:
        yield p


@pytest.fixture
async def both_providers(simulator_url: str) -> AsyncIterator[dict[str, Provider]]:
    """Every implementation at once, for tests that compare them with each other."""
    async with contextlib.AsyncExitStack() as stack:
        providers: dict[str, Provider] = {}
        for name in PROVIDERS:
            providers[name] = await stack.enter_async_context(open_provider(name, simulator_url))
        yield providers


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    """`Settings.store` for each store; only the redis one starts a redis-server."""
    if request.param == "memory":
        return "memory"
    server: Redis = request.getfixturevalue("redis")
    return server.url


@pytest.fixture
async def make_manager(provider: Provider, store_url: str) -> AsyncIterator[MakeManager]:
    """`await make_manager(models=…, retry=…)`: an open StreamManager on a store of its
    own over `provider`. Each gets a fresh ModelTable unless given one (a table learns
    which models reject a prefill). Every one is closed, with its store, at the end."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            *, models: ModelTable | None = None, retry: RetryPolicy = RETRY
        ) -> StreamManager:
            store = build_store(Settings(store=store_url))
            stack.push_async_callback(store.aclose)
            manager = StreamManager(
                log=store.log,
                cluster=store.cluster,
                upstreams=Pool.single(
                    provider, cooldown_base_s=retry.base_delay, cooldown_max_s=retry.max_delay
                ),
                models=ModelTable() if models is None else models,
                retry=retry,
                timings=TIMINGS,
            )
            stack.push_async_callback(manager.aclose)
            await manager.open()
            return manager

        yield make


@pytest.fixture
async def stream_manager(make_manager: MakeManager) -> StreamManager:
    """An open StreamManager with the suite's retry policy and a fresh ModelTable."""
    return await make_manager()
