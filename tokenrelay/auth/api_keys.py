"""API keys, stored only as hashes.

A key looks like `trk_<id>_<secret>`. The keys file holds one line per key,
`<id> <sha256(secret) hex> <user> [<roles>]`, so a leaked file grants nothing. The id
selects the line; the secret's hash is compared in constant time. `<roles>` is optional
and comma-separated; the one role today is `admin` (may see every user's usage).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from tokenrelay.auth.base import ADMIN_ROLE, Principal, require
from tokenrelay.errors import AuthenticationFailed

PREFIX = "trk_"


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    secret_hash: bytes
    user: str
    roles: frozenset[str] = frozenset()


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key(user: str, *, admin: bool = False) -> tuple[str, str]:
    """A fresh key and the line that stores its hash: (key, keys-file line)."""
    if not user or any(c.isspace() for c in user):
        raise ValueError("user must be a non-empty name without spaces")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    line = f"{key_id} {_hash(secret).hex()} {user}"
    return f"{PREFIX}{key_id}_{secret}", f"{line} {ADMIN_ROLE}" if admin else line


def parse_lines(text: str) -> dict[str, StoredKey]:
    keys: dict[str, StoredKey] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (3, 4):
            raise ValueError(f"keys line {number}: expected '<id> <sha256 hex> <user> [<roles>]'")
        key_id, digest, user = parts[:3]
        roles = frozenset(parts[3].split(",")) if len(parts) == 4 else frozenset()
        keys[key_id] = StoredKey(key_id, bytes.fromhex(digest), user, roles)
    return keys


class ApiKeyAuth:
    mode = "api_key"

    def __init__(self, keys: dict[str, StoredKey]) -> None:
        if not keys:
            raise ValueError(
                "api_key auth needs at least one key: create one with "
                "'tokenrelay keys create --user NAME' and pass --api-keys-file"
            )
        self._keys = keys

    @classmethod
    def from_sources(cls, path: Path | None, inline: str | None) -> ApiKeyAuth:
        keys: dict[str, StoredKey] = {}
        if path is not None:
            keys.update(parse_lines(path.read_text()))
        if inline:
            keys.update(parse_lines(inline.replace(";", "\n")))
        return cls(keys)

    async def authenticate(self, credential: str | None) -> Principal:
        presented = require(credential)
        key_id, _, secret = presented.removeprefix(PREFIX).partition("_")
        stored = self._keys.get(key_id) if presented.startswith(PREFIX) else None
        # Hash and compare even for an unknown id, so timing tells nothing either way.
        expected = stored.secret_hash if stored else b"\0" * 32
        if not hmac.compare_digest(_hash(secret), expected) or stored is None:
            raise AuthenticationFailed("Invalid API key")
        return Principal(stored.user, admin=ADMIN_ROLE in stored.roles)
