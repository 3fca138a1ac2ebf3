"""Credentials for the auth tests: API keys made with the real CLI, JWTs signed here,
and a JWKS endpoint on a real socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

from tests.support.processes import ROOT, free_port

JWT_SECRET = "test-hs256-secret-that-is-long-enough-for-hs256"
ISSUER = "https://issuer.test"
AUDIENCE = "tokenrelay"


def tokenrelay_cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m tokenrelay ARGS` in `cwd` with only `env` (and PATH) set; not checked.
    Rich gets a wide terminal, so that its tables are never wrapped."""
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def keys_cli(keys_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tokenrelay keys ARGS` on `keys_file` (named by TOKENRELAY_API_KEYS_FILE)."""
    return tokenrelay_cli("keys", *args, TOKENRELAY_API_KEYS_FILE=str(keys_file))


def create_key(keys_file: Path, user: str, *options: str) -> str:
    """A key made by `tokenrelay keys create` (with `options`, e.g. `--rpm 2`), which
    prints it once."""
    out = keys_cli(keys_file, "create", "--user", user, *options)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def api_key_auth(tmp: Path, user: str) -> tuple[list[str], str]:
    """`serve` flags for API-key auth with one key made for `user`, and that key."""
    keys_file = tmp / "keys.txt"
    return ["--auth", "api_key", "--api-keys-file", str(keys_file)], create_key(keys_file, user)


def claims(user: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(user: str, **overrides: Any) -> str:
    return jwt.encode(claims(user, **overrides), JWT_SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Jwks:
    """A JWKS endpoint whose key set the test can change; it counts fetches."""

    url: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0


@contextmanager
def jwks_server() -> Iterator[Jwks]:
    port = free_port()
    state = Jwks(f"http://127.0.0.1:{port}/.well-known/jwks.json")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
