"""The stream log seam: an append-only, per-stream list of events, read from an offset.

Every entry carries `seq` (0, 1, 2, … per stream) and one normalized event
(`tokenrelay.events`). A stream ends with exactly one terminal entry (`Done` or
`Failed`); nothing is appended after it. What an entry looks like on the wire is
the dialects' business: each dialect encodes an entry at most once and keeps the
bytes on it, however many readers follow the stream.

What a store shares with other gateway processes (leases, takeover, remote cancel)
is not here but behind `streams.cluster.Cluster`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tokenrelay.events import TERMINAL_TYPES, Event
from tokenrelay.providers.base import GenerationRequest


class StreamTakenOver(Exception):
    """Another process now writes this stream; the local producer must stop quietly."""


class Entry:
    """One log entry: its seq, its event, and the event's bytes in each dialect that
    has rendered it. Nearly every stream is read in one dialect, so its bytes take a
    slot of their own; a second dialect turns the slot into a small dict. (Entries
    live as long as their stream's log: each slot costs 8 bytes a token.)"""

    __slots__ = ("_dialect", "_wire", "event", "seq")

    def __init__(self, seq: int, event: Event) -> None:
        self.seq = seq
        self.event = event
        self._dialect: str | None = None  # whose bytes `_wire` is; "" once it is a dict
        self._wire: bytes | dict[str, bytes] = b""

    @property
    def terminal(self) -> bool:
        return type(self.event) in TERMINAL_TYPES

    def encoded(self, dialect: str, encode: Callable[[Event], bytes]) -> bytes:
        """`encode(self.event)`, computed once per dialect and kept."""
        if self._dialect == dialect:
            return self._wire  # type: ignore[return-value]
        if self._dialect is None:
            wire = encode(self.event)
            self._dialect, self._wire = dialect, wire
            return wire
        if self._dialect:  # a second dialect: keep both by name from now on
            self._wire, self._dialect = {self._dialect: self._wire}, ""  # type: ignore[dict-item]
        by_dialect: dict[str, bytes] = self._wire  # type: ignore[assignment]
        found = by_dialect.get(dialect)
        if found is None:
            found = by_dialect[dialect] = encode(self.event)
        return found

    def __repr__(self) -> str:
        return f"Entry({self.seq}, {self.event!r})"


@dataclass(frozen=True, slots=True)
class Opening:
    """How the upstream's answer began (Claude's `message_start`): the model that
    serves it and the input usage it reported. Kept with the stream, not in its log,
    so that a dialect can start the message as Claude did without an event the others
    would have to skip; set once, before the first content is appended."""

    model: str
    usage: dict[str, int]  # input_tokens, and the cache counts when there are any


@dataclass(slots=True)
class StreamMeta:
    stream_id: str
    owner: str
    request_id: str
    model: str
    fingerprint: str  # hash of the request body, for Idempotency-Key checks
    created_at: float
    idempotency_key: str | None = None
    # What was asked, so that another process can take the stream over.
    request: GenerationRequest | None = None
    # Whom its limits and budget count against, when not its owner (without
    # authentication, the client's address): a takeover meters it against the same.
    principal: str = ""
    opening: Opening | None = None
    # The API it came by (a metrics label), and whether its reader's format can be told
    # to reset: a takeover continues it as it began.
    route: str = "api"
    restartable: bool = True
    # Whether another model may answer when its own cannot (`"fallback": false`: never).
    fallback: bool = True


class StreamLog(Protocol):
    async def create(self, meta: StreamMeta) -> None:
        """Register a new, empty stream. A store may write it with the stream's first
        append, which then raises what writing it would have."""
        ...

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """The stream's metadata, or None if it is unknown or expired."""
        ...

    async def append(self, stream_id: str, event: Event) -> int:
        """Append one event and wake every waiting reader; returns its seq.
        A terminal event closes the stream and starts its `stream_ttl`.
        A store may write it after returning, with the entries appended after it (a
        read that starts after this call sees it): a refusal or a failure is then
        raised by a later append of the stream, the terminal one at the latest, which
        waits for every entry before it."""
        ...

    async def set_opening(self, stream_id: str, opening: Opening) -> None:
        """Keep how the stream's answer began with its metadata; a reader that has
        seen an entry appended after this call sees it in `meta`."""
        ...

    async def read(
        self, stream_id: str, after: int, wait: float, hold: float = 0.0
    ) -> list[Entry] | None:
        """Every entry with `seq > after`, in order. If there is none yet and the stream
        is open, waits up to `wait` seconds for one and returns [] on time-out (or when
        `wake_readers` is called). None if the stream is unknown or expired, or if it
        has ended and nothing follows `after`: nothing ever will. `hold` > 0: first
        lets entries gather for that long, unless the stream ends (a write window)."""
        ...

    def wake_readers(self) -> None:
        """End every waiting read now, as if its wait had timed out."""
        ...

    async def claim_idempotency_key(
        self, scope: str, key: str, stream_id: str, fingerprint: str
    ) -> tuple[str, str]:
        """Bind `key` (within `scope`) to `stream_id` and the request's fingerprint
        unless it is already bound; returns the (stream id, fingerprint) it is bound to.
        The binding lives as long as the stream's log."""
        ...

    async def ping(self) -> bool:
        """Whether the store is reachable."""
        ...

    async def aclose(self) -> None: ...
