"""An upstream pool for the tests: several `tokenrelay simulate` processes as the
deployments of one gateway, which finds them in an upstreams TOML file, each one's key
in an environment variable of its own with a value no other key shares.

    with simulators(tmp) as start:
        east, west = start("east"), start("west", "--rpm", "2")
        with run_gateway(tmp, [Deployment(east, weight=3), Deployment(west)]) as gw:
            ...  gw.url, gw.states(), east.stats(), east.fault(status=529, count=1)
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import free_port, spawn

# What every gateway of a pool test runs with: quick retries, and no ledger unless a
# test gives it a database.
POOL_GATEWAY_ENV = {
    "TOKENRELAY_RETRY_BASE_DELAY": "0.05",
    "TOKENRELAY_HEARTBEAT_INTERVAL": "0.5",
    "TOKENRELAY_DRAIN_TIMEOUT": "2",
    "TOKENRELAY_DATABASE_URL": "off",
}


@dataclass
class Sim:
    """One `tokenrelay simulate`, and the key a gateway calls it with."""

    name: str
    url: str
    key_env: str  # the variable the upstreams file names
    key: str  # its value: distinctive, so that a leak is found by searching for it

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_sim/stats").json()  # type: ignore[no-any-return]

    def statuses(self) -> dict[str, int]:
        """Its `/v1/messages` answers by HTTP status, e.g. {"200": 3, "529": 1}."""
        return self.stats()["statuses"]  # type: ignore[no-any-return]

    def answered(self) -> int:
        """The calls it answered 200 (a stream counts as its 200)."""
        return self.statuses().get("200", 0)

    def fault(self, **fault: Any) -> None:
        response = httpx.post(f"{self.url}/_sim/fault", json=fault)
        assert response.status_code == 200, response.text

    def reset(self) -> None:
        assert httpx.post(f"{self.url}/_sim/reset").json() == {"status": "ok"}

    def api_keys(self) -> list[str]:
        return httpx.get(f"{self.url}/_sim/api_keys").json()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Deployment:
    sim: Sim
    weight: float = 1
    models: Sequence[str] = ()  # empty: every model
    extra: Mapping[str, Any] = field(default_factory=dict)  # more fields (rpm, tpm, kind…)


StartSim = Callable[..., Sim]


@contextlib.contextmanager
def simulators(tmp: Path) -> Iterator[StartSim]:
    """`start(name, *flags)`: a simulator (`--ttft-ms 0 --tps 0` unless the flags say
    otherwise); every one started stops when the block ends."""
    with contextlib.ExitStack() as stack:

        def start(name: str, *flags: str) -> Sim:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0", *flags]
            log = tmp / f"sim-{name}-{port}.log"
            stack.enter_context(spawn(args, f"{url}/healthz", log_path=log))
            env = f"TR_TEST_UPSTREAM_KEY_{name.upper().replace('-', '_')}"
            return Sim(name, url, env, f"sk-ant-pooltest-{name}-{secrets.token_hex(12)}")

        yield start


def toml_value(value: Any) -> str:
    """A TOML literal for a string, number, bool or list of them (JSON spells those
    as TOML does)."""
    return json.dumps(value)


def upstreams_toml(
    deployments: Sequence[Deployment],
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    pool: Mapping[str, Any] | None = None,
) -> str:
    lines: list[str] = []
    if pool:
        lines.append("[pool]")
        lines += [f"{k} = {toml_value(v)}" for k, v in pool.items()]
    for d in deployments:
        fields: dict[str, Any] = {
            "name": d.sim.name, "base_url": d.sim.url, "api_key_env": d.sim.key_env,
            "weight": d.weight,
        }  # fmt: skip
        if d.models:
            fields["models"] = list(d.models)
        fields.update(d.extra)
        lines.append("\n[[deployment]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    if fallbacks:
        lines.append("\n[fallbacks]")
        lines += [f"{toml_value(m)} = {toml_value(list(c))}" for m, c in fallbacks.items()]
    return "\n".join(lines) + "\n"


@dataclass
class PoolGateway:
    url: str
    log_path: Path
    upstreams_file: Path
    env: dict[str, str]  # what it was started with, the deployments' keys included

    def upstreams(self, api_key: str | None = None) -> dict[str, Any]:
        headers = {"x-api-key": api_key} if api_key else {}
        response = httpx.get(f"{self.url}/api/upstreams", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def states(self) -> dict[str, str]:
        """Each deployment's state by name: healthy, cooling, probing or full."""
        return {d["name"]: d["state"] for d in self.upstreams()["deployments"]}

    def log_text(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def run_gateway(
    tmp: Path,
    deployments: Sequence[Deployment],
    *args: str,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    pool: Mapping[str, Any] | None = None,
    **env: str,
) -> Iterator[PoolGateway]:
    """A gateway over these deployments (`serve` flags `args`, environment `env`),
    its log in `tmp`; it must exit cleanly on SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    upstreams_file = tmp / f"upstreams-{port}.toml"
    upstreams_file.write_text(upstreams_toml(deployments, fallbacks, pool))
    keys = {d.sim.key_env: d.sim.key for d in deployments}
    full_env = {**POOL_GATEWAY_ENV, **keys, **env}
    log_path = tmp / f"gateway-{port}.log"
    serve = ["serve", "--port", str(port), "--upstreams-file", str(upstreams_file), *args]
    with spawn(serve, f"{url}/readyz", env=full_env, log_path=log_path) as proc:
        yield PoolGateway(url, log_path, upstreams_file, full_env)
        proc.terminate()
        assert proc.wait(timeout=15) == 0
