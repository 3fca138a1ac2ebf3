"""What instances tell each other of the deployments' health.

A cool-down decided on one instance holds on all of them, so that the whole cluster
backs off together instead of each instance finding out on its own with a failed
call; and after it, one probe call across the cluster finds out whether the
deployment is back. `LocalHealth` is the one-instance case (nothing to tell);
`redis_health.RedisHealth` shares through the stream store's Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# name, seconds of cool-down left (0: recovered), reason, failures in a row.
OnChange = Callable[[str, float, str, int], None]


class SharedHealth(Protocol):
    async def open(self, names: Sequence[str], on_change: OnChange) -> None:
        """Start hearing of other instances' verdicts (and learn the current ones)."""
        ...

    async def cooled(self, name: str, seconds: float, reason: str, failures: int) -> None: ...

    async def recovered(self, name: str) -> None: ...

    async def claim_probe(self, name: str, seconds: float) -> bool:
        """True when this instance's next call to `name` is the probe (nobody else's is)."""
        ...

    async def release_probe(self, name: str) -> None:
        """The probe call ended without a verdict (cancelled): another may probe."""
        ...

    async def aclose(self) -> None: ...


class LocalHealth:
    async def open(self, names: Sequence[str], on_change: OnChange) -> None:
        return None

    async def cooled(self, name: str, seconds: float, reason: str, failures: int) -> None:
        return None

    async def recovered(self, name: str) -> None:
        return None

    async def claim_probe(self, name: str, seconds: float) -> bool:
        return True

    async def release_probe(self, name: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
