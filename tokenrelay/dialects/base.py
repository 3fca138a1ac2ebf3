"""The dialect seam: one wire format for a stream's log.

A dialect object serves one reader of one stream. It renders a batch of entries to
the bytes of one write, and knows its own heartbeat, its own frame for an error
that is not in the log, and what follows the terminal event. The JSON of an entry
is computed once per dialect and kept on the entry (`Entry.encoded`), so a hundred
readers of one stream cost one encoding per event; what a dialect adds per reader
is formatting, never JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenrelay.errors import GatewayError
from tokenrelay.streams.log import Entry


class Dialect(Protocol):
    # Sent when the stream has been idle for the heartbeat interval.
    heartbeat: bytes
    # Sent after the terminal event (e.g. OpenAI's `data: [DONE]`); may be empty.
    final: bytes

    def render(self, entries: Sequence[Entry]) -> bytes:
        """Every entry of the batch, as one chunk."""
        ...

    def error(self, error: GatewayError) -> bytes:
        """A failure that ends the response but is not in the log."""
        ...
