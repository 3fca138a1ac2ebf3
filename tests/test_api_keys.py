"""API keys as their users expect: `serve` reads the file `keys create` writes,
`keys list` and `keys revoke` on it, a running gateway that follows it (a revoked key
refused, a new one accepted, a broken file ignored), and a key's own rate limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import assert_error, eventually, free_port, log_events, run_stack, spawn, start
from tests.support.auth import create_key, keys_cli, tokenrelay_cli
from tests.support.clock import fresh_minute
from tokenrelay.auth.api_keys import ApiKeyAuth, StoredKey, parse_line, parse_lines

# Windows are calendar minutes: a test that straddles a minute boundary would see its
# counters reset, so it waits for a minute with enough of it left.
# A reload is checked at most once a second, on a request: well within this.
RELOAD_WITHIN = 10.0
LINE_FORMAT = "'<id> <sha256 hex> <user> [<roles>|-] [rpm=N,tpm=N]'"


def key_id_of(key: str) -> str:
    return key.removeprefix("trk_").split("_", 1)[0]


def ticket_status(gateway: str, key: str) -> int:
    """An authenticated request that starts no stream: 200 for a good key, else 401."""
    response = httpx.post(f"{gateway}/api/tickets", headers={"x-api-key": key}, timeout=10)
    return response.status_code


def replace_atomically(path: Path, text: str) -> None:
    """What an editor that saves by renaming does: the gateway never sees half a file."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    os.replace(temp, path)


def flags(keys_file: Path) -> list[str]:
    return ["--auth", "api_key", "--api-keys-file", str(keys_file)]


def test_key_lines_have_three_four_or_five_fields_and_a_bad_one_names_its_line() -> None:
    digest = "ab" * 32
    secret_hash = bytes.fromhex(digest)
    assert parse_line(f"k1 {digest} alice", 1) == StoredKey("k1", secret_hash, "alice")
    assert parse_line(f"k2 {digest} root admin", 1) == StoredKey(
        "k2", secret_hash, "root", frozenset({"admin"})
    )
    assert parse_line(f"k3 {digest} carol - rpm=60,tpm=0", 1) == StoredKey(
        "k3", secret_hash, "carol", frozenset(), {"rpm": 60, "tpm": 0}
    )
    assert parse_line("  # a comment", 1) is None
    bad = {
        "k1": f"keys line 7: expected {LINE_FORMAT}",
        "k1 zz alice": "keys line 7: the second field must be a sha256 in hex",
        f"k1 {digest} alice rpm=60": "keys line 7: limits come after the roles (or '-')",
        f"k1 {digest} alice - rpm=lots": (
            "keys line 7: limits must be 'rpm=N,tpm=N,daily_usd=N,monthly_usd=N', not 'rpm=lots'"
        ),
        f"k1 {digest} alice - rpm=1 extra": f"keys line 7: expected {LINE_FORMAT}",
    }
    for line, message in bad.items():
        with pytest.raises(ValueError) as raised:
            parse_line(line, 7)
        assert str(raised.value) == message


def test_a_users_limits_hold_across_their_keys_and_the_later_line_wins() -> None:
    digest = "ab" * 32
    auth = ApiKeyAuth(
        parse_lines(
            f"k1 {digest} alice - rpm=10,tpm=500\nk2 {digest} alice admin rpm=60\nk3 {digest} bob\n"
        )
    )
    assert auth.limits_for("alice") == {"rpm": 60, "tpm": 500}
    assert auth.limits_for("bob") is None


async def test_serve_reads_the_keys_file_that_keys_create_writes_by_default(
    tmp_path: Path,
) -> None:
    made = tokenrelay_cli("keys", "create", "--user", "alice", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert os.listdir(tmp_path) == ["tokenrelay-keys.txt"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port), "--provider", "simulator", "--auth", "api_key"]
    env = {"TOKENRELAY_SIMULATOR_TTFT_MS": "0", "TOKENRELAY_SIMULATOR_TPS": "0"}
    log = tmp_path / "gateway.log"
    with spawn(serve, f"{base}/readyz", env=env, cwd=tmp_path, log_path=log):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"prompt": "Hello [[sim:tokens=3]]"}
            read = await start(client, body, headers={"x-api-key": made.stdout.strip()})
            assert read.events[-1].data["done"] is True
            refused = await client.post("/api/stream-response", json=body)
            assert assert_error(refused, 401, "authentication_error") == (
                "Missing credentials: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )


@pytest.mark.parametrize("content", [None, "", "# nobody yet\n"])
def test_serve_without_keys_refuses_to_start_naming_the_file_and_the_command(
    tmp_path: Path, content: str | None
) -> None:
    keys_file = tmp_path / "tokenrelay-keys.txt"
    if content is not None:
        keys_file.write_text(content)
    out = tokenrelay_cli("serve", "--auth", "api_key", "--port", str(free_port()), cwd=tmp_path)
    assert (out.returncode, out.stdout) == (2, "")
    # The path as the gateway saw it: its cwd, symlinks resolved.
    where = keys_file.resolve()
    why = f"there is no keys file at {where}" if content is None else f"{where} has none"
    assert out.stderr == (
        f"tokenrelay: api_key auth needs at least one key, but {why}: "
        "create one with 'tokenrelay keys create --user NAME'\n"
    )


def test_keys_list_of_a_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    out = keys_cli(keys_file, "list")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"tokenrelay: no keys file at {keys_file}: "
        f"create a key with 'tokenrelay keys create --user NAME --file {keys_file}'\n"
    )


def test_keys_list_shows_ids_users_roles_and_limits_and_never_a_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    made = {
        "alice": create_key(keys_file, "alice"),
        "root": create_key(keys_file, "root", "--admin"),
        "carol": create_key(keys_file, "carol", "--rpm", "60", "--tpm", "100000"),
    }
    ids = {user: key_id_of(key) for user, key in made.items()}
    hashes = [line.split()[1] for line in keys_file.read_text().splitlines()]
    secrets = [key.split("_", 2)[2] for key in made.values()]

    table = keys_cli(keys_file, "list")
    assert table.returncode == 0, table.stderr
    header = [line for line in table.stdout.splitlines() if line.startswith("┃")]
    assert [[c.strip() for c in line.split("┃")[1:-1]] for line in header] == [
        ["key id", "user", "roles", "limits"]
    ]
    rows = [[c.strip() for c in line.split("│")[1:-1]]
            for line in table.stdout.splitlines() if line.startswith("│")]  # fmt: skip
    assert rows == [
        [ids["alice"], "alice", "", ""],
        [ids["root"], "root", "admin", ""],
        [ids["carol"], "carol", "", "rpm=60,tpm=100000"],
    ]

    listed = keys_cli(keys_file, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout) == {
        "keys": [
            {"id": ids["alice"], "user": "alice", "roles": [], "limits": None},
            {"id": ids["root"], "user": "root", "roles": ["admin"], "limits": None},
            {
                "id": ids["carol"],
                "user": "carol",
                "roles": [],
                "limits": {"rpm": 60, "tpm": 100000},
            },
        ]
    }
    for secret in hashes + secrets:
        for out in (table, listed):
            assert secret not in out.stdout + out.stderr


def test_keys_revoke_by_user_or_id_replaces_the_file_atomically_with_mode_0600(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.txt"
    a1, bob = create_key(keys_file, "alice"), create_key(keys_file, "bob")
    with keys_file.open("a") as out:  # a hand-written comment survives a revoke
        out.write("# the carol line is next\n")
    a2, carol = create_key(keys_file, "alice"), create_key(keys_file, "carol", "--rpm", "5")
    text = keys_file.read_text()
    lines = {line.split()[0]: line for line in text.splitlines() if not line.startswith("#")}
    before = keys_file.stat().st_ino

    by_user = keys_cli(keys_file, "revoke", "--user", "alice")
    assert (by_user.returncode, by_user.stderr) == (0, "")
    assert by_user.stdout == (
        f"revoked {key_id_of(a1)} (user alice)\nrevoked {key_id_of(a2)} (user alice)\n"
    )
    assert keys_file.read_text() == (
        f"{lines[key_id_of(bob)]}\n# the carol line is next\n{lines[key_id_of(carol)]}\n"
    )
    after = keys_file.stat()
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_ino != before  # replaced by a rename, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.txt"]  # no temp file left

    by_id = keys_cli(keys_file, "revoke", "--id", key_id_of(bob))
    assert (by_id.returncode, by_id.stdout) == (0, f"revoked {key_id_of(bob)} (user bob)\n")
    assert keys_file.read_text() == f"# the carol line is next\n{lines[key_id_of(carol)]}\n"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600

    unchanged = keys_file.read_text()
    for args, message in [
        (["--user", "alice"], f"no key of user 'alice' in {keys_file}"),
        (["--id", "000000000000"], f"no key with id '000000000000' in {keys_file}"),
    ]:
        unknown = keys_cli(keys_file, "revoke", *args)
        assert (unknown.returncode, unknown.stdout) == (1, "")
        assert unknown.stderr == f"tokenrelay: {message}\n"
    neither = keys_cli(keys_file, "revoke")
    assert (neither.returncode, neither.stderr) == (
        2,
        "tokenrelay: give either --user NAME or --id KEY_ID\n",
    )
    assert keys_file.read_text() == unchanged


def test_a_running_gateway_refuses_a_revoked_key_and_accepts_a_new_one(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    alice, bob = create_key(keys_file, "alice"), create_key(keys_file, "bob")
    with run_stack(tmp_path, *flags(keys_file)) as stack:
        assert (ticket_status(stack.gateway, alice), ticket_status(stack.gateway, bob)) == (
            200,
            200,
        )
        assert keys_cli(keys_file, "revoke", "--user", "alice").returncode == 0
        eventually(
            lambda: ticket_status(stack.gateway, alice) == 401,
            what="the revoked key to be refused",
            within=RELOAD_WITHIN,
        )
        refused = httpx.post(f"{stack.gateway}/api/tickets", headers={"x-api-key": alice})
        assert assert_error(refused, 401, "authentication_error") == "Invalid API key"
        assert ticket_status(stack.gateway, bob) == 200

        carol = create_key(keys_file, "carol")
        eventually(
            lambda: ticket_status(stack.gateway, carol) == 200,
            what="the new key to be accepted",
            within=RELOAD_WITHIN,
        )
        assert ticket_status(stack.gateway, bob) == 200
        reloads = log_events(stack.log_text(), "api_keys_reloaded")
        assert reloads == [
            {"event": "api_keys_reloaded", "path": str(keys_file), "count": "1"},
            {"event": "api_keys_reloaded", "path": str(keys_file), "count": "2"},
        ]


def test_a_keys_file_that_breaks_keeps_the_last_good_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    alice = create_key(keys_file, "alice")
    good = keys_file.read_text()
    with run_stack(tmp_path, *flags(keys_file)) as stack:
        assert ticket_status(stack.gateway, alice) == 200

        def failures(at_least: int) -> list[dict[str, str]] | None:
            # Each poll is a request (the file is checked on the request path), and
            # each must still be let in with the last good keys.
            assert ticket_status(stack.gateway, alice) == 200
            found = log_events(stack.log_text(), "api_keys_reload_failed")
            return found if len(found) >= at_least else None

        replace_atomically(keys_file, good + "garbage\n")
        failed = eventually(lambda: failures(1), what="a failed reload", within=RELOAD_WITHIN)
        assert failed == [
            {
                "event": "api_keys_reload_failed",
                "path": str(keys_file),
                "error": f"keys line 2: expected {LINE_FORMAT}",
            }
        ]
        keys_file.unlink()
        failed = eventually(
            lambda: failures(2), what="a second failed reload", within=RELOAD_WITHIN
        )
        assert failed[1:] == [
            {
                "event": "api_keys_reload_failed",
                "path": str(keys_file),
                "error": f"[Errno 2] No such file or directory: '{keys_file}'",
            }
        ]
        # A broken file is reported once, not at every check.
        assert failures(0) == failed

        replace_atomically(keys_file, good)
        reloaded = eventually(
            lambda: (
                ticket_status(stack.gateway, alice) == 200
                and log_events(stack.log_text(), "api_keys_reloaded")
            ),
            what="the good file to be reloaded",
            within=RELOAD_WITHIN,
        )
        assert reloaded == [{"event": "api_keys_reloaded", "path": str(keys_file), "count": "1"}]


async def test_a_keys_own_rpm_limit_applies_to_its_user(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    alice, bob = create_key(keys_file, "alice", "--rpm", "2"), create_key(keys_file, "bob")
    body = {"prompt": "Hi [[sim:tokens=3]]"}
    with run_stack(tmp_path, *flags(keys_file)) as stack:
        fresh_minute()
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:

            async def post(key: str) -> httpx.Response:
                headers = {"x-api-key": key}
                return await client.post("/api/stream-response", json=body, headers=headers)

            for remaining in (1, 0):
                response = await post(alice)
                assert response.status_code == 200
                assert response.headers["x-ratelimit-limit-requests"] == "2"
                assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
                assert "x-ratelimit-limit-tokens" not in response.headers  # rpm only
            refused = await post(alice)
            message = assert_error(refused, 429, "rate_limit_error")
            assert message == "Rate limit exceeded: 2 requests per minute"
            assert refused.headers["x-ratelimit-limit-requests"] == "2"
            # The limit is alice's own: bob's key has none, and the gateway sets none.
            other = await post(bob)
            assert other.status_code == 200
            assert "x-ratelimit-limit-requests" not in other.headers
        assert stack.sim_stats()["requests"] == 3
