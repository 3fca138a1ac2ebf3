"""The usual test stack: `tokenrelay simulate` and a gateway that uses it through the
anthropic provider (the official SDK over a real socket), each its own process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.processes import ROOT, free_port, spawn

# Hand-written Claude streams the simulator replays verbatim.
REPLAYS = ROOT / "tests" / "fixtures" / "replays"


@dataclass
class Stack:
    """A simulator and a gateway that uses it through the anthropic provider."""

    gateway: str
    simulator: str
    gateway_log: Path

    def sim_stats(self) -> dict[str, int]:
        return httpx.get(f"{self.simulator}/_sim/stats").json()  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return self.gateway_log.read_text()


FAST_GATEWAY_ENV = {
    "ANTHROPIC_API_KEY": "sk-test-upstream-key",
    "TOKENRELAY_RETRY_BASE_DELAY": "0.05",
    "TOKENRELAY_UPSTREAM_RETRIES": "2",
    "TOKENRELAY_HEARTBEAT_INTERVAL": "0.5",
    "TOKENRELAY_DRAIN_TIMEOUT": "2",
}


@contextlib.contextmanager
def run_stack(tmp: Path, *args: str, **env: str) -> Iterator[Stack]:
    """A stack whose gateway gets `serve` flags `args` and environment `env`."""
    sim_port, gw_port = free_port(), free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    log_path = tmp / f"gateway-{gw_port}.log"
    sim_args = ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0"]
    sim_args += ["--replay-dir", str(REPLAYS)]  # [[sim:replay=NAME]]: a stream of tests/fixtures
    with spawn(sim_args, f"{simulator}/healthz", log_path=tmp / f"sim-{sim_port}.log"):
        gw_args = ["serve", "--port", str(gw_port), "--provider", "anthropic"]
        gw_args += ["--anthropic-base-url", simulator, *args]
        with spawn(
            gw_args, f"{gateway}/readyz", env={**FAST_GATEWAY_ENV, **env}, log_path=log_path
        ) as proc:
            yield Stack(gateway, simulator, log_path)
            proc.terminate()
            # SIGTERM ends open streams and exits cleanly.
            assert proc.wait(timeout=15) == 0
