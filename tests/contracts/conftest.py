"""Contract suites: the same tests over every implementation of a seam.

`provider` is parametrized over both implementations of `Provider`: the simulator
in-process, and `anthropic` (the official SDK) over a real socket to a `tokenrelay
simulate` process, so any difference between them fails a test. `simulator_url` is
that process, started once per session; a module that needs the simulator as an
upstream (a gateway, a producer) may use it too. It counts attempts per request
(`[[sim:fail_times=K]]`) for the whole session, so a test that relies on the count
asks a prompt no other test asks.

The process helpers are local on purpose: the suite depends only on the package.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tokenrelay.providers.anthropic import AnthropicProvider
from tokenrelay.providers.base import Provider
from tokenrelay.providers.simulator import SimulatorProvider

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("simulator", "anthropic")
# Short, so that `[[sim:stall_after=N]]` costs a test one second, yet far above the
# simulator's own latency (it sends every delta at once with --tps 0).
STALL_TIMEOUT = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def run_simulator(log_path: Path) -> Iterator[str]:
    """`tokenrelay simulate` with no pacing on a free port, until the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenrelay", *args], cwd=ROOT, stdout=log, stderr=log
        )
        try:
            wait_until_ok(f"{url}/healthz", proc)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (so the exit
    # status tells a supervisor why it ended): that, not 0, is a clean exit here.
    assert code == -signal.SIGTERM, log_path.read_text()


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_simulator(tmp_path_factory.mktemp("simulator") / "simulate.log") as url:
        yield url


@contextlib.asynccontextmanager
async def open_provider(name: str, simulator_url: str) -> AsyncIterator[Provider]:
    """A fresh provider of the given implementation; closed when the block ends."""
    provider: Provider
    if name == "simulator":
        provider = SimulatorProvider(ttft_ms=0, tps=0)
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
    url = request.getfixturevalue("simulator_url") if request.param == "anthropic" else ""
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
