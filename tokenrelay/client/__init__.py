"""Client-side tools: the Python client, `tokenrelay chat` and `tokenrelay bench`.

Nothing here imports the server: a program that only talks to a gateway loads httpx,
not FastAPI or the anthropic SDK.
"""

from tokenrelay.client.relay import StreamEvent, TokenRelay, TokenRelayError, stream_sync

__all__ = ["StreamEvent", "TokenRelay", "TokenRelayError", "stream_sync"]
