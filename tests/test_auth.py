"""Authentication and stream ownership, per route and auth mode, on real gateways:
the unauthenticated, the forged, the expired and the wrong user are all refused."""

from __future__ import annotations

import base64
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import (
    Stack,
    assert_error,
    direct_text,
    read_stream,
    resume,
    run_stack,
    start,
    unique,
)
from tests.support.auth import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    bearer,
    claims,
    create_key,
    hs256,
    jwks_server,
)


@dataclass
class Secured:
    """A gateway with authentication on, and credentials for it."""

    mode: str
    stack: Stack
    alice: dict[str, str]
    bob: dict[str, str]
    # (what is wrong with it, the headers) — each must get a 401.
    bad: list[tuple[str, dict[str, str]]]


@pytest.fixture(scope="module")
def api_key_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("api_key")
    keys_file = tmp / "keys.txt"
    alice, bob = create_key(keys_file, "alice"), create_key(keys_file, "bob")
    key_id, secret = alice.removeprefix("trk_").split("_", 1)
    bad = [
        ("no credentials", {}),
        ("unknown key", {"x-api-key": "trk_000000000000_" + secret}),
        ("right id, wrong secret", {"x-api-key": f"trk_{key_id}_{secret[:-2]}xx"}),
        ("not a key at all", bearer("hello")),
        ("basic auth", {"authorization": "Basic " + base64.b64encode(b"a:b").decode()}),
        ("empty bearer", {"authorization": "Bearer"}),
    ]
    with run_stack(tmp, "--auth", "api_key", "--api-keys-file", str(keys_file)) as stack:
        yield Secured("api_key", stack, {"x-api-key": alice}, bearer(bob), bad)


@pytest.fixture(scope="module")
def jwt_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("jwt")
    now = int(time.time())
    forged = jwt.encode(claims("alice"), "another-secret-of-sufficient-length!!", "HS256")
    unsigned = jwt.encode(claims("alice"), key=None, algorithm="none")  # type: ignore[arg-type]
    bad = [
        ("no credentials", {}),
        ("expired", bearer(hs256("alice", exp=now - 60))),
        ("not valid yet", bearer(hs256("alice", nbf=now + 600))),
        ("wrong issuer", bearer(hs256("alice", iss="https://evil.test"))),
        ("wrong audience", bearer(hs256("alice", aud="someone-else"))),
        ("no expiry", bearer(hs256("alice", exp=None))),
        ("forged signature", bearer(forged)),
        ("alg none", bearer(unsigned)),
        ("no user claim", bearer(hs256("alice", sub=None))),
        ("garbage", bearer("not.a.jwt")),
    ]
    env = {
        "TOKENRELAY_JWT_SECRET": JWT_SECRET,
        "TOKENRELAY_JWT_ISSUER": ISSUER,
        "TOKENRELAY_JWT_AUDIENCE": AUDIENCE,
    }
    with run_stack(tmp, "--auth", "jwt", **env) as stack:
        yield Secured("jwt", stack, bearer(hs256("alice")), bearer(hs256("bob")), bad)


@pytest.fixture(params=["api_key", "jwt"])
def secured(request: pytest.FixtureRequest) -> Secured:
    return request.getfixturevalue(f"{request.param}_gateway")  # type: ignore[no-any-return]


async def alices_stream(secured: Secured, client: httpx.AsyncClient) -> tuple[str, str]:
    """A stream of alice's, cut after its first two events: (its last event id, prompt)."""
    prompt = unique("Whose stream is this [[sim:tokens=12]]")
    read = await start(client, {"prompt": prompt}, headers=secured.alice, stop_after=2)
    return read.last_id, prompt


async def test_every_route_refuses_missing_and_bad_credentials(secured: Secured) -> None:
    async with httpx.AsyncClient(base_url=secured.stack.gateway, timeout=30) as client:
        last_id, _ = await alices_stream(secured, client)
        stream_id = last_id.rpartition(":")[0]
        routes = [
            ("POST", "/api/stream-response", {"json": {"prompt": "hi"}}),
            ("POST", "/api/stream-response", {"headers": {"last-event-id": last_id}}),
            ("GET", "/api/stream-response?prompt=hi", {}),
            ("GET", f"/api/streams/{stream_id}", {"headers": {"last-event-id": last_id}}),
            ("GET", f"/api/streams/{stream_id}?after=0", {}),
            ("DELETE", f"/api/streams/{stream_id}", {}),
            ("POST", "/api/tickets", {}),
        ]
        refused = 0
        for method, url, kwargs in routes:
            for why, credentials in secured.bad:
                headers = {**kwargs.get("headers", {}), **credentials}
                json_body = kwargs.get("json")
                response = await client.request(method, url, headers=headers, json=json_body)
                assert response.status_code == 401, (method, url, why, response.text)
                assert_error(response, 401, "authentication_error")
                refused += 1
        assert refused == len(routes) * len(secured.bad)
        # The stream was never cancelled by any of that: alice still reads all of it.
        rest = await resume(client, last_id, headers=secured.alice)
        assert rest.events[-1].data["done"] is True


async def test_another_user_gets_404_for_everything_of_a_stream(secured: Secured) -> None:
    async with httpx.AsyncClient(base_url=secured.stack.gateway, timeout=30) as client:
        last_id, prompt = await alices_stream(secured, client)
        stream_id = last_id.rpartition(":")[0]
        bob, resume_header = secured.bob, {"last-event-id": last_id}
        attempts = [
            client.get(f"/api/streams/{stream_id}", headers={**bob, **resume_header}),
            client.get(f"/api/streams/{stream_id}?after=-1", headers=bob),
            client.post("/api/stream-response", headers={**bob, **resume_header}),
            client.get("/api/stream-response?prompt=x", headers={**bob, **resume_header}),
            client.delete(f"/api/streams/{stream_id}", headers=bob),
        ]
        for attempt in attempts:
            response = await attempt
            message = assert_error(response, 404, "not_found_error")
            assert message == f"No stream '{stream_id}': unknown, expired, or not yours"
        # Nothing bob did touched it: alice resumes and gets exactly the whole answer.
        rest = await resume(client, last_id, headers=secured.alice)
        first = await read_stream(client, "GET", f"/api/streams/{stream_id}?after=-1",
                                  headers=secured.alice)  # fmt: skip
        assert rest.events[-1].data["done"] is True
        assert first.text == await direct_text(secured.stack.simulator, prompt)
        assert [e.seq for e in first.events] == list(range(len(first.events)))


async def test_idempotency_keys_are_scoped_to_their_owner(secured: Secured) -> None:
    key = {"idempotency-key": unique("shared-key")}
    async with httpx.AsyncClient(base_url=secured.stack.gateway, timeout=30) as client:
        a = await start(client, {"prompt": unique("alpha")}, headers={**secured.alice, **key})
        b = await start(client, {"prompt": unique("beta")}, headers={**secured.bob, **key})
        # Alice reusing her key with another body is the 422 of DESIGN §3.2; bob's use of
        # the same key string was his own and collided with nothing.
        again = await client.post(
            "/api/stream-response", json={"prompt": "gamma"}, headers={**secured.alice, **key}
        )
    assert a.events[-1].data["done"] is True and b.events[-1].data["done"] is True
    assert a.events[0].stream_id != b.events[0].stream_id
    assert_error(again, 422, "invalid_request_error")


async def test_stream_ids_are_unguessable(secured: Secured) -> None:
    async with httpx.AsyncClient(base_url=secured.stack.gateway, timeout=30) as client:
        ids = set()
        for _ in range(5):
            read = await start(client, {"prompt": "x [[sim:tokens=1]]"}, headers=secured.alice)
            ids.add(read.events[0].stream_id)
    assert len(ids) == 5
    for stream_id in ids:
        # token_urlsafe(24): 32 characters, 192 random bits.
        assert len(base64.urlsafe_b64decode(stream_id + "==")) >= 16


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    key = create_key(keys_file, "carol")
    key_id, secret = key.removeprefix("trk_").split("_", 1)
    lines = keys_file.read_text().splitlines()
    assert len(lines) == 1
    stored_id, digest, user = lines[0].split()
    assert (stored_id, user) == (key_id, "carol")
    assert secret not in keys_file.read_text() and len(bytes.fromhex(digest)) == 32
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


async def test_api_key_works_as_bearer_and_as_x_api_key(api_key_gateway: Secured) -> None:
    key = api_key_gateway.alice["x-api-key"]
    async with httpx.AsyncClient(base_url=api_key_gateway.stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": "x [[sim:tokens=5]]"}, headers=bearer(key))
        # Same principal whichever header carried the key: the other one resumes it.
        again = await resume(client, read.events[0].id, headers={"x-api-key": key})
    assert read.events[-1].data["done"] is True
    assert again.events[-1].data["done"] is True


async def test_jwt_failures_say_what_is_wrong(jwt_gateway: Secured) -> None:
    expected = {
        "no credentials": "Missing credentials: send 'Authorization: Bearer <key>' or "
        "'x-api-key: <key>'",
        "expired": "Token has expired",
        "not valid yet": "Token is not valid yet",
        "wrong issuer": "Invalid token: InvalidIssuerError",
        "wrong audience": "Invalid token: InvalidAudienceError",
        "no expiry": "Invalid token: MissingRequiredClaimError",
        "forged signature": "Invalid token: InvalidSignatureError",
        "alg none": "Invalid token: InvalidAlgorithmError",
        "no user claim": "Token has no 'sub' claim",
        "garbage": "Invalid token: DecodeError",
    }
    async with httpx.AsyncClient(base_url=jwt_gateway.stack.gateway, timeout=30) as client:
        for why, headers in jwt_gateway.bad:
            response = await client.post("/api/tickets", headers=headers)
            assert assert_error(response, 401, "authentication_error") == expected[why], why


async def test_jwt_user_claim_is_configurable(tmp_path: Path) -> None:
    env = {"TOKENRELAY_JWT_SECRET": JWT_SECRET, "TOKENRELAY_JWT_USER_CLAIM": "email"}
    with run_stack(tmp_path, "--auth", "jwt", **env) as stack:
        one = bearer(jwt.encode(claims("sub-1", email="dana@example.com"), JWT_SECRET))
        two = bearer(jwt.encode(claims("sub-2", email="dana@example.com"), JWT_SECRET))
        other = bearer(jwt.encode(claims("sub-1", email="eve@example.com"), JWT_SECRET))
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            read = await start(client, {"prompt": "x [[sim:tokens=3]]"}, headers=one)
            url = f"/api/streams/{read.events[0].stream_id}?after=-1"
            # The owner is the email claim: a token with another sub but the same email is
            # the same user; the same sub with another email is not.
            assert (await read_stream(client, "GET", url, headers=two)).text == read.text
            assert (await client.get(url, headers=other)).status_code == 404


def _pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_jwt_rs256_public_key(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "public.pem").write_bytes(_pem_public(private))
    env = {"TOKENRELAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "public.pem")}
    with run_stack(tmp_path, "--auth", "jwt", **env) as stack:
        good = bearer(jwt.encode(claims("frank"), private, algorithm="RS256"))
        forged = bearer(jwt.encode(claims("frank"), other, algorithm="RS256"))
        # The public key used as an HS256 secret: the classic algorithm-confusion attack.
        confused = bearer(jwt.encode(claims("frank"), "x" * 64, algorithm="HS256"))
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            assert (await client.post("/api/tickets", headers=good)).status_code == 200
            for headers in (forged, confused):
                assert_error(await client.post("/api/tickets", headers=headers), 401,
                             "authentication_error")  # fmt: skip


async def test_jwks_keys_are_cached_and_refetched_for_an_unknown_kid(tmp_path: Path) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())

    def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
        return {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}

    def token(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
        return bearer(jwt.encode(claims("gina"), key, algorithm="ES256", headers={"kid": kid}))

    with jwks_server() as jwks:
        jwks.keys = [jwk(first, "k1")]
        env = {"TOKENRELAY_JWT_JWKS_URL": jwks.url, "TOKENRELAY_JWT_JWKS_REFRESH_COOLDOWN": "0"}
        with run_stack(tmp_path, "--auth", "jwt", **env) as stack:
            async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
                for _ in range(3):
                    response = await client.post("/api/tickets", headers=token(first, "k1"))
                    assert response.status_code == 200, response.text
                assert jwks.fetches == 1  # cached
                # Key rotation: a token signed with a new key names a kid not yet seen.
                jwks.keys = [jwk(first, "k1"), jwk(second, "k2")]
                response = await client.post("/api/tickets", headers=token(second, "k2"))
                assert response.status_code == 200, response.text
                assert jwks.fetches == 2
                unknown = await client.post("/api/tickets", headers=token(second, "k9"))
                assert_error(unknown, 401, "authentication_error")
                assert jwks.fetches == 3
