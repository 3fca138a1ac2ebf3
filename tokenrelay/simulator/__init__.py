"""A deterministic stand-in for Claude, in-process and as a Messages API server."""
