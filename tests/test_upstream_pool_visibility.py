"""The pool made visible, and its secrets kept: `GET /api/upstreams` (admin-only with
auth), `tokenrelay upstreams` against a running gateway (its table's exact rows for a
healthy and a cooling deployment, `--json`) and `--check FILE` offline; the
deployments' keys, each in a variable of its own with a value found nowhere else,
never appear in the gateway's log, the route, /metrics, the command's output or an
upstreams file's error — and each deployment was called with its own key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import assert_error, read_stream, unique
from tests.support.auth import create_key, tokenrelay_cli
from tests.support.pool import Deployment, PoolGateway, Sim, run_gateway, simulators

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-6"


@dataclass
class Visible:
    gw: PoolGateway
    east: Sim
    west: Sim
    admin: str
    user: str

    @property
    def secrets(self) -> list[str]:
        return [self.east.key, self.west.key]

    def cli(self, *args: str, **env: str) -> Any:
        return tokenrelay_cli("upstreams", *args, **env)


def ask(stack: Visible, prompt: str) -> None:
    async def read() -> Any:
        async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as client:
            return await read_stream(
                client, "POST", "/api/stream-response",
                json={"prompt": f"{prompt} [[sim:tokens=3]]", "model": HAIKU},
                headers={"x-api-key": stack.user},
            )  # fmt: skip

    import asyncio

    assert asyncio.run(read()).events[-1].data["done"] is True


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Visible]:
    """east (haiku and sonnet) and west (every model, a rate limit of 100 a minute),
    with API-key auth. Three calls are made, once: east answers, then west, then east
    answers a 529 for 30 s and cools, and west answers for it."""
    tmp = tmp_path_factory.mktemp("visible")
    keys_file = tmp / "keys.txt"
    admin, user = create_key(keys_file, "ops", "--admin"), create_key(keys_file, "alice")
    with simulators(tmp) as start_sim:
        east, west = start_sim("east"), start_sim("west", "--rpm", "100")
        deployments = [Deployment(east, models=[HAIKU, SONNET]), Deployment(west)]
        auth = ("--auth", "api_key", "--api-keys-file", str(keys_file))
        with run_gateway(tmp, deployments, *auth, fallbacks={SONNET: [HAIKU]}) as gw:
            visible = Visible(gw, east, west, admin, user)
            ask(visible, unique("East answers"))
            ask(visible, unique("West answers"))
            east.fault(status=529, seconds=30, retry_after=30)
            ask(visible, unique("East is overloaded"))
            assert east.statuses() == {"200": 1, "529": 1} and west.statuses() == {"200": 2}
            yield visible


def rows(table: str, rule: str = "│") -> list[list[str]]:
    """A Rich table's rows as cells (the header's rule is ┃)."""
    return [[cell.strip() for cell in line.split(rule)[1:-1]]
            for line in table.splitlines() if line.startswith(rule)]  # fmt: skip


def test_the_route_is_for_admins_when_auth_is_on(stack: Visible) -> None:
    url = f"{stack.gw.url}/api/upstreams"
    assert_error(httpx.get(url), 401, "authentication_error")
    refused = httpx.get(url, headers={"x-api-key": stack.user})
    assert assert_error(refused, 403, "permission_error") == (
        "The upstream pool's state needs the admin role"
    )
    pool = stack.gw.upstreams(stack.admin)
    assert pool["fallbacks"] == {SONNET: [HAIKU]}
    east, west = pool["deployments"]
    assert east["cooling_until"] > time.time()
    assert {**east, "cooling_until": None} == {
        "name": "east", "kind": "anthropic", "base_url": stack.east.url,
        "key": f"env:{stack.east.key_env}", "weight": 1.0, "models": [HAIKU, SONNET],
        "state": "cooling", "cooling_until": None, "reason": "overloaded", "failures": 1,
        "in_flight": 0, "calls_1m": 2, "errors_1m": 1, "error_rate_1m": 0.5,
        "requests_remaining": None, "requests_limit": None, "tokens_remaining": None,
        "tokens_limit": None, "rpm": 0, "tpm": 0,
    }  # fmt: skip
    assert west == {
        "name": "west", "kind": "anthropic", "base_url": stack.west.url,
        "key": f"env:{stack.west.key_env}", "weight": 1.0, "models": [],
        "state": "healthy", "cooling_until": None, "reason": None, "failures": 0,
        "in_flight": 0, "calls_1m": 2, "errors_1m": 0, "error_rate_1m": 0.0,
        "requests_remaining": 98, "requests_limit": 100, "tokens_remaining": None,
        "tokens_limit": None, "rpm": 0, "tpm": 0,
    }  # fmt: skip


def test_the_command_shows_a_healthy_and_a_cooling_deployment(stack: Visible) -> None:
    shown = stack.cli("--url", stack.gw.url, "--json", TOKENRELAY_API_KEY=stack.admin)
    assert shown.returncode == 0, shown.stderr
    pool = orjson.loads(shown.stdout)
    assert pool == stack.gw.upstreams(stack.admin) | {"deployments": pool["deployments"]}
    until = pool["deployments"][0]["cooling_until"]
    table = stack.cli("--url", stack.gw.url, "--api-key", stack.admin)
    assert table.returncode == 0, table.stderr
    assert f"Upstream deployments of {stack.gw.url}" in table.stdout
    assert rows(table.stdout, "┃") == [
        ["name", "state", "until", "in flight", "calls 1m", "errors 1m", "rate limit left",
         "weight", "models"],
    ]  # fmt: skip
    assert rows(table.stdout) == [
        ["east", "cooling (overloaded)", time.strftime("%H:%M:%SZ", time.gmtime(until)), "0",
         "2", "1", "", "1", f"{HAIKU}, {SONNET}"],
        ["west", "healthy", "", "0", "2", "0", "requests 98/100", "1", "every model"],
    ]  # fmt: skip
    assert f"fallbacks: {SONNET} -> {HAIKU}" in table.stdout
    # Without the admin's key: the gateway's refusal, and exit 1.
    refused = stack.cli("--url", stack.gw.url, "--api-key", stack.user)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"tokenrelay: {stack.gw.url}: 403: The upstream pool's state needs the admin role\n"
    )


def test_check_prints_a_good_file_and_refuses_a_bad_one(stack: Visible, tmp_path: Path) -> None:
    path = stack.gw.upstreams_file
    keys = {stack.east.key_env: stack.east.key, stack.west.key_env: stack.west.key}
    ok = stack.cli("--check", str(path), **keys)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [
        f"{path}: ok, 2 deployment(s)",
        f"  east (anthropic) at {stack.east.url}, key env:{stack.east.key_env}, weight 1, "
        f"models: {HAIKU}, {SONNET}",
        f"  west (anthropic) at {stack.west.url}, key env:{stack.west.key_env}, weight 1, "
        "models: every model",
        f"  fallbacks: {SONNET} -> {HAIKU}",
    ]
    as_json = orjson.loads(stack.cli("--check", str(path), "--json", **keys).stdout)
    assert [d["key"] for d in as_json["deployments"]] == [
        f"env:{stack.east.key_env}", f"env:{stack.west.key_env}"
    ]  # fmt: skip
    assert as_json["fallbacks"] == {SONNET: [HAIKU]}

    missing = stack.cli("--check", str(path), **{stack.east.key_env: stack.east.key})
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"tokenrelay: {path}: deployment 'west': environment variable {stack.west.key_env} "
        "is not set\n"
    )
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(path.read_text().replace(f'"{SONNET}"]', '"claude-sonet-9"]', 1))
    refused = stack.cli("--check", str(unknown), **keys)
    assert (refused.returncode, refused.stderr) == (
        2,
        f"tokenrelay: {unknown}: deployment 'east': unknown model claude-sonet-9 "
        "(not in the price table)\n",
    )


def test_no_key_is_shown_anywhere_and_each_deployment_got_its_own(
    stack: Visible, tmp_path: Path
) -> None:
    shown = [
        stack.gw.log_text(),
        httpx.get(f"{stack.gw.url}/api/upstreams", headers={"x-api-key": stack.admin}).text,
        httpx.get(f"{stack.gw.url}/metrics", headers={"x-api-key": stack.admin}).text,
    ]
    for args in (("--json",), ()):
        out = stack.cli("--url", stack.gw.url, *args, TOKENRELAY_API_KEY=stack.admin)
        shown += [out.stdout, out.stderr]
    keys = {stack.east.key_env: stack.east.key, stack.west.key_env: stack.west.key}
    out = stack.cli("--check", str(stack.gw.upstreams_file), **keys)
    shown += [out.stdout, out.stderr]
    # Keys written where they must not be: in the file, in a URL, on a broken YAML line.
    inline = tmp_path / "inline.toml"
    inline.write_text(f'[[deployment]]\nname = "east"\napi_key = "{stack.east.key}"\n')
    in_url = tmp_path / "in-url.toml"
    in_url.write_text(
        f'[[deployment]]\nname = "east"\nbase_url = "https://k:{stack.east.key}@h.example"\n'
        f'api_key_env = "{stack.east.key_env}"\n'
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"deployment:\n  - name: east\n    api_key: {stack.east.key}: x\n")
    for bad in (inline, in_url, broken):
        out = stack.cli("--check", str(bad), **keys)
        assert out.returncode == 2 and out.stderr.startswith(f"tokenrelay: {bad}: ")
        shown += [out.stdout, out.stderr]
        served = tokenrelay_cli("serve", "--upstreams-file", str(bad), **keys)
        assert served.returncode == 2 and served.stderr == out.stderr
        shown += [served.stdout, served.stderr]
    for text in shown:
        for secret in stack.secrets:
            assert secret not in text
    assert set(stack.east.api_keys()) == {stack.east.key}
    assert set(stack.west.api_keys()) == {stack.west.key}
    assert (len(stack.east.api_keys()), len(stack.west.api_keys())) == (2, 2)
