"""Who is asking: API keys, JWTs, and single-use stream tickets for EventSource."""
