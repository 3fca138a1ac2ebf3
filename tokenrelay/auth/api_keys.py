"""API keys, stored only as hashes, in a file a running gateway follows.

A key looks like `trk_<id>_<secret>`. The keys file holds one line per key,

    <id> <sha256(secret) hex> <user> [<roles>|-] [rpm=N,tpm=N]

so a leaked file grants nothing. The id selects the line; the secret's hash is compared
in constant time. `<roles>` is comma-separated (the one role today is `admin`: may see
every user's usage), `-` for none; the optional last field is the user's own rate
limits, over the gateway's. Lines with 3 or 4 fields are the older forms and stay valid.

The gateway re-reads the file when it changes: on the request path, at most one `stat`
per second (no task to own, nothing per request). A file that cannot be read or parsed
leaves the last good keys in force. The CLI rewrites it atomically (a temp file in the
same directory, fsync, rename) under an `flock`, so a reader never sees half a file and
`keys create` never appends to a file `keys revoke` is replacing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenrelay.auth.base import ADMIN_ROLE, Principal, require
from tokenrelay.errors import AuthenticationFailed
from tokenrelay.observability.log import log_event

log = logging.getLogger("tokenrelay.auth")

PREFIX = "trk_"
# Where `tokenrelay keys create` writes and `serve --auth api_key` reads, unless told.
DEFAULT_KEYS_FILE = Path("tokenrelay-keys.txt")
# The limits a key line may set, as `name=N`: per minute (0 = unlimited), and budgets
# in USD per UTC day and month (decimals allowed; kept here in micro-dollars, so that
# every limit is an integer).
LIMIT_NAMES = ("rpm", "tpm", "daily_usd", "monthly_usd")
USD_LIMITS = frozenset({"daily_usd", "monthly_usd"})
NO_ROLES = "-"
# How often the request path may stat the keys file: revocation takes effect within
# about this long, and the cost is one stat per interval, not one per request.
RELOAD_CHECK_S = 1.0
LINE_FORMAT = "'<id> <sha256 hex> <user> [<roles>|-] [rpm=N,tpm=N]'"


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    secret_hash: bytes
    user: str
    roles: frozenset[str] = frozenset()
    # The user's own rate limits ("rpm", "tpm"), over the gateway's; None: none set.
    limits: dict[str, int] | None = None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        if name not in LIMIT_NAMES or value < 0:
            raise ValueError(f"limits are {LIMITS_FORMAT} with N >= 0, not {name}={value}")


LIMITS_FORMAT = "rpm=N,tpm=N,daily_usd=N,monthly_usd=N"


def usd(micro: int) -> str:
    """Micro-dollars as a plain decimal (never 5.6e-05)."""
    return f"{micro / 1e6:.6f}".rstrip("0").rstrip(".") or "0"


def format_limits(limits: dict[str, int]) -> str:
    """As a key line writes them: budgets in USD."""
    return ",".join(
        f"{name}={usd(value)}" if name in USD_LIMITS else f"{name}={value}"
        for name, value in limits.items()
    )


def new_key(
    user: str, *, admin: bool = False, limits: dict[str, int] | None = None
) -> tuple[str, str]:
    """A fresh key and the line that stores its hash: (key, keys-file line)."""
    if not user or any(c.isspace() for c in user):
        raise ValueError("user must be a non-empty name without spaces")
    check_limits(limits or {})
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    fields = [key_id, _hash(secret).hex(), user]
    if admin or limits:
        fields.append(ADMIN_ROLE if admin else NO_ROLES)
    if limits:
        fields.append(format_limits(limits))
    return f"{PREFIX}{key_id}_{secret}", " ".join(fields)


def _parse_limits(text: str, number: int) -> dict[str, int]:
    limits: dict[str, int] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        whole = value.isascii() and value.isdigit()
        decimal = name in USD_LIMITS and value.count(".") == 1 and value.replace(".", "").isdigit()
        if name not in LIMIT_NAMES or not (whole or decimal):
            raise ValueError(f"keys line {number}: limits must be '{LIMITS_FORMAT}', not {text!r}")
        limits[name] = round(float(value) * 1e6) if name in USD_LIMITS else int(value)
    return limits


def parse_line(raw: str, number: int) -> StoredKey | None:
    """The key on one line of a keys file; None for a blank line or a comment."""
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split()
    if len(parts) not in (3, 4, 5):
        raise ValueError(f"keys line {number}: expected {LINE_FORMAT}")
    key_id, digest, user = parts[:3]
    try:
        secret_hash = bytes.fromhex(digest)
    except ValueError:
        secret_hash = b""
    if len(secret_hash) != 32:
        raise ValueError(f"keys line {number}: the second field must be a sha256 in hex")
    roles: frozenset[str] = frozenset()
    if len(parts) >= 4 and parts[3] != NO_ROLES:
        if "=" in parts[3]:
            # A hand-written `<id> <hash> <user> rpm=60` would otherwise be a role.
            raise ValueError(f"keys line {number}: limits come after the roles (or '-')")
        roles = frozenset(parts[3].split(","))
    limits = _parse_limits(parts[4], number) if len(parts) == 5 else None
    return StoredKey(key_id, secret_hash, user, roles, limits)


def parse_lines(text: str) -> dict[str, StoredKey]:
    keys: dict[str, StoredKey] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        key = parse_line(raw, number)
        if key is not None:
            keys[key.key_id] = key
    return keys


def create_command(path: Path) -> str:
    """The command that adds a key to `path`."""
    flag = "" if path.absolute() == DEFAULT_KEYS_FILE.absolute() else f" --file {path}"
    return f"tokenrelay keys create --user NAME{flag}"


# (inode, size, mtime, ctime): a rename, a rewrite or a chmod each changes one of them.
Stamp = tuple[int, int, int, int]


class KeysFile:
    """A keys file, and how it looked when it was last read."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.stamp: Stamp | None = None

    def _stat(self) -> Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def changed(self) -> bool:
        return self._stat() != self.stamp

    def read(self) -> dict[str, StoredKey]:
        # Stamped before reading: a write during the read changes the stamp again,
        # so it is picked up at the next check instead of being missed.
        self.stamp = self._stat()
        return parse_lines(self.path.read_text())


class ApiKeyAuth:
    mode = "api_key"

    def __init__(
        self,
        keys: dict[str, StoredKey],
        *,
        file: KeysFile | None = None,
        inline: dict[str, StoredKey] | None = None,
    ) -> None:
        if not keys:
            raise ValueError(
                "api_key auth needs at least one key: create one with "
                "'tokenrelay keys create --user NAME' and pass --api-keys-file"
            )
        self._file = file
        self._inline = inline or {}
        self._use(keys)
        self._next_check = time.monotonic() + RELOAD_CHECK_S

    @classmethod
    def from_sources(cls, path: Path | None, inline: str | None) -> ApiKeyAuth:
        """Keys from the file at `path` (followed while the gateway runs) and inline
        lines (`;`-separated, fixed); an inline key wins over the file's with its id."""
        inline_keys = parse_lines(inline.replace(";", "\n")) if inline else {}
        if path is None:
            return cls(inline_keys, inline=inline_keys)
        file = KeysFile(path)
        try:
            keys = file.read()
        except FileNotFoundError:
            raise ValueError(
                f"api_key auth needs at least one key, but there is no keys file at "
                f"{file.path}: create one with '{create_command(path)}'"
            ) from None
        except ValueError as exc:
            raise ValueError(f"{file.path}: {exc}") from None
        if not keys and not inline_keys:
            raise ValueError(
                f"api_key auth needs at least one key, but {file.path} has none: "
                f"create one with '{create_command(path)}'"
            )
        return cls({**keys, **inline_keys}, file=file, inline=inline_keys)

    def _use(self, keys: dict[str, StoredKey]) -> None:
        self._keys = keys
        # Limits are the principal's, so they hold across all of a user's keys; when
        # two of them name the same limit, the later line (the newer key) wins.
        limits: dict[str, dict[str, int]] = {}
        for key in keys.values():
            if key.limits:
                limits[key.user] = {**limits.get(key.user, {}), **key.limits}
        self._limits = limits

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._file is None or now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_S
        file = self._file
        if not file.changed():
            return
        try:
            # A stat and, on a change, a read of a small local file: blocking, but
            # once per interval at most, not worth a thread hop per request.
            keys = file.read()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log_event(
                log, "api_keys_reload_failed", level=logging.WARNING, path=file.path, error=exc
            )
            return
        # An empty file is honoured (every key revoked), unlike one that cannot be read.
        self._use({**keys, **self._inline})
        log_event(log, "api_keys_reloaded", path=file.path, count=len(self._keys))

    def limits_for(self, user: str) -> dict[str, int] | None:
        """The user's own limits from their key lines (`rpm`, `tpm`), or None."""
        return self._limits.get(user)

    async def authenticate(self, credential: str | None) -> Principal:
        self._reload_if_changed()
        presented = require(credential)
        key_id, _, secret = presented.removeprefix(PREFIX).partition("_")
        stored = self._keys.get(key_id) if presented.startswith(PREFIX) else None
        # Hash and compare even for an unknown id, so timing tells nothing either way.
        expected = stored.secret_hash if stored else b"\0" * 32
        if not hmac.compare_digest(_hash(secret), expected) or stored is None:
            raise AuthenticationFailed("Invalid API key")
        return Principal(stored.user, admin=ADMIN_ROLE in stored.roles)


# The keys file from the CLI's side: append, list, revoke.


@contextlib.contextmanager
def _locked(path: Path, flags: int) -> Iterator[int]:
    """A descriptor of the file at `path`, under an exclusive flock. Revoking replaces
    the file, so a writer that waited for the lock on the old one tries again."""
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield fd
                return
        finally:
            os.close(fd)  # also releases the lock


def append_key(path: Path, line: str) -> None:
    """Add a key line; the file is created with mode 0600 if it does not exist."""
    with _locked(path, os.O_RDWR | os.O_CREAT | os.O_APPEND) as fd:
        size = os.fstat(fd).st_size
        # A hand-edited file may lack its last newline: the new line must not join it.
        missing_newline = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if missing_newline else "") + line + "\n").encode())


def read_keys(path: Path) -> list[StoredKey]:
    """Every key in the file, in its order (the file is replaced whole, never rewritten
    in place, so no lock is needed to read it)."""
    return list(parse_lines(path.read_text()).values())


def _replace(path: Path, text: str) -> None:
    # mkstemp creates the file with mode 0600, in the same directory so that the rename
    # is atomic: a gateway reading the file sees the old keys or the new, never a part.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # The rename itself is durable only once the directory is written too.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def revoke_keys(
    path: Path, *, user: str | None = None, key_id: str | None = None
) -> list[StoredKey]:
    """Remove the keys of `user`, or the key `key_id`, keeping every other line as it
    was; the revoked keys, none if nothing matched (then the file is left alone)."""
    with _locked(path, os.O_RDWR) as fd:
        with os.fdopen(os.dup(fd), "r") as current:
            lines = current.read().splitlines(keepends=True)
        kept: list[str] = []
        revoked: list[StoredKey] = []
        for number, raw in enumerate(lines, 1):
            key = parse_line(raw, number)
            if key is not None and (key.user == user or key.key_id == key_id):
                revoked.append(key)
            else:
                kept.append(raw if raw.endswith("\n") else raw + "\n")
        if revoked:
            _replace(path, "".join(kept))
        return revoked
