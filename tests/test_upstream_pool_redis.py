"""Two gateway instances on one Redis share their upstream deployments' health: the
one that meets a 529 cools the deployment for both, so the other, which never called
it, sends it nothing until the cool-down is over; one probe brings it back for both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support import eventually, redis_server, start, unique
from tests.support.pool import Deployment, PoolGateway, run_gateway, simulators

HAIKU = "claude-haiku-4-5"


async def ask(gw: PoolGateway, prompt: str) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        read = await start(client, {"prompt": f"{prompt} [[sim:tokens=3]]", "model": HAIKU})
    assert read.events[-1].data["done"] is True


def east_of(gw: PoolGateway) -> dict[str, Any]:
    east: dict[str, Any] = gw.upstreams()["deployments"][0]
    return east


async def test_two_instances_share_a_cool_down_and_its_end(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path / "redis") as redis,
        simulators(tmp_path) as start_sim,
    ):
        east, west = start_sim("east"), start_sim("west")
        deployments = [Deployment(east), Deployment(west)]
        store = ("--store", redis.url)
        with (
            run_gateway(tmp_path, deployments, *store) as one,
            run_gateway(tmp_path, deployments, *store) as two,
        ):
            east.fault(status=529, count=1, retry_after=4)
            await ask(one, unique("Instance one meets the 529"))
            assert east.statuses() == {"529": 1} and west.statuses() == {"200": 1}

            # Instance two hears of it (pub/sub), without a call of its own.
            eventually(lambda: east_of(two)["state"] == "cooling", what="two to see east cool")
            shared = east_of(two)
            assert (shared["reason"], shared["failures"], shared["calls_1m"]) == (
                "overloaded", 1, 0
            )  # fmt: skip
            for i in range(3):
                await ask(two, unique(f"Instance two while east cools {i}"))
            assert east.statuses() == {"529": 1} and west.statuses() == {"200": 4}
            assert east_of(two)["state"] == "cooling"  # the calls were all inside it
            assert "upstream_cooldown" not in two.log_text()

            eventually(
                lambda: all(east_of(gw)["state"] != "cooling" for gw in (one, two)),
                what="east's cool-down to end on both",
            )
            # One's scores: east 0, west 2: west; then east 1, west 1: east, the probe.
            await ask(one, unique("Instance one after the cool-down"))
            await ask(one, unique("Instance one probes east"))
            assert east.statuses() == {"529": 1, "200": 1} and west.statuses() == {"200": 5}
            # Two hears that east is back: no probe of its own.
            eventually(lambda: east_of(two)["failures"] == 0, what="two to hear east is back")
            # Two's scores: east 0 (never a candidate while cooling), west 0: east, west.
            await ask(two, unique("Instance two uses east again"))
            await ask(two, unique("Instance two uses west too"))
            assert east.statuses() == {"529": 1, "200": 2} and west.statuses() == {"200": 6}
            assert "upstream_probe" not in two.log_text()
            assert [east_of(gw)["state"] for gw in (one, two)] == ["healthy", "healthy"]
