"""The cluster seam: what this instance shares about its streams with other instances.

A stream is produced by exactly one instance at a time. With a shared store that
instance holds a lease on it; when the instance dies its leases lapse and another
instance takes the stream over (`ClusterHost.continue_stream`), when it shuts down
it hands its streams over, and a cancel or a reader may arrive at any instance.

With the memory store there is nobody to share with: `LocalCluster` does nothing,
the way a lifespan that is off still answers the lifespan protocol.
"""

from __future__ import annotations

from typing import Protocol

from tokenrelay.streams.log import Entry, StreamMeta


class ClusterHost(Protocol):
    """What a cluster asks of the instance's stream manager."""

    instance_id: str
    draining: bool

    def local_streams(self) -> list[str]:
        """The streams whose producers run here."""
        ...

    def continue_stream(self, meta: StreamMeta, entries: list[Entry]) -> None:
        """Produce, from here on, a stream another instance began."""
        ...

    def cancel_local(self, stream_id: str) -> None:
        """Cancel a stream if its producer runs here."""
        ...

    async def stop_for_handover(self) -> list[str]:
        """Stop every local producer without ending its stream; returns their ids."""
        ...


class Cluster(Protocol):
    async def open(self, host: ClusterHost) -> None:
        """Start the background work (lease renewal, takeover, cancel subscription)."""
        ...

    async def claim(self, stream_id: str) -> None:
        """This instance produces the new stream `stream_id`."""
        ...

    def producer_ended(self, stream_id: str) -> None:
        """The local producer of `stream_id` has stopped, for whatever reason: readers
        here must follow whichever instance writes it next."""
        ...

    async def reader_alive(self, stream_id: str) -> None:
        """Somebody here follows `stream_id` (called every few seconds while they do)."""
        ...

    async def last_read_elsewhere(self, stream_id: str) -> float | None:
        """When any instance last saw a reader of `stream_id` (epoch seconds)."""
        ...

    async def cancel_elsewhere(self, stream_id: str) -> bool:
        """Ask whichever instance produces `stream_id` to cancel it; True if one does."""
        ...

    async def hand_over(self) -> int:
        """On shutdown: let other instances continue the local streams at once;
        returns how many were handed over (0 when nobody can take them)."""
        ...

    async def aclose(self) -> None: ...


class LocalCluster:
    """One instance alone: no leases, nobody to take over or hand over to."""

    async def open(self, host: ClusterHost) -> None:
        return None

    async def claim(self, stream_id: str) -> None:
        return None

    def producer_ended(self, stream_id: str) -> None:
        return None

    async def reader_alive(self, stream_id: str) -> None:
        return None

    async def last_read_elsewhere(self, stream_id: str) -> float | None:
        return None

    async def cancel_elsewhere(self, stream_id: str) -> bool:
        return False

    async def hand_over(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None
