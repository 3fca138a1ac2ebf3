"""Claude's API on a gateway with API-key auth, through the official SDK and httpx:
every new route wants the gateway's own key (as `x-api-key` or `Authorization:
Bearer`), a stream is its owner's alone, the upstream only ever sees the gateway's
upstream key, a rate limit is a `RateLimitError` with `retry-after`; and the model
list and token counting in Claude's format."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.support import FAST_GATEWAY_ENV, Stack, assert_error, eventually, run_stack, unique
from tests.support.auth import create_key
from tests.support.claude_wire import MODEL, body, frames, post, text_of
from tokenrelay.pricing import DEFAULT_MODELS

UPSTREAM_KEY = FAST_GATEWAY_ENV["ANTHROPIC_API_KEY"]


@dataclass
class Keys:
    alice: str
    bob: str
    limited: str  # one request a minute
    ledger: str  # whose usage one test reads


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    keys_file = tmp_path_factory.mktemp("messages-keys") / "keys.txt"
    made = Keys(
        create_key(keys_file, "alice"),
        create_key(keys_file, "bob"),
        create_key(keys_file, "carol", "--rpm", "1"),
        create_key(keys_file, "dave"),
    )
    return keys_file, made


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Keys]) -> Iterator[Stack]:
    flags = ["--auth", "api_key", "--api-keys-file", str(keys[0])]
    with run_stack(tmp_path_factory.mktemp("messages-auth"), *flags) as running:
        yield running


@pytest.fixture
def key(keys: tuple[Path, Keys]) -> Keys:
    return keys[1]


def sdk(stack: Stack, **credentials: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.gateway, max_retries=0, **credentials)  # type: ignore[arg-type]


ROUTES = [
    ("POST", "/v1/messages", body("Hi")),
    ("GET", "/v1/streams/abc", None),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    (
        "POST",
        "/v1/messages/count_tokens",
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    ),
]


@pytest.mark.parametrize(("method", "path", "payload"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_wants_the_gateways_key(
    stack: Stack, key: Keys, method: str, path: str, payload: object
) -> None:
    url = stack.gateway + path
    for headers in [{}, {"x-api-key": "sk-not-a-key"}, {"authorization": "Bearer sk-not-a-key"}]:
        refused = httpx.request(method, url, json=payload, headers=headers)
        assert_error(refused, 401, "authentication_error")
    allowed = httpx.request(method, url, json=payload, headers={"x-api-key": key.alice})
    assert allowed.status_code == (404 if path == "/v1/streams/abc" else 200), allowed.text


def test_the_sdk_authenticates_with_api_key_or_auth_token(stack: Stack, key: Keys) -> None:
    ask = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": unique("Hi")}],
    }
    with sdk(stack, api_key=key.alice) as client:
        by_key = client.messages.create(**ask)  # type: ignore[call-overload]
    with sdk(stack, auth_token=key.alice) as client:  # Authorization: Bearer
        by_token = client.messages.create(**ask)  # type: ignore[call-overload]
    assert by_key.content == by_token.content
    with (
        sdk(stack, api_key="sk-wrong") as client,
        pytest.raises(anthropic.AuthenticationError) as raised,
    ):
        client.messages.create(**ask)  # type: ignore[call-overload]
    assert raised.value.type == "authentication_error"


def test_the_upstream_sees_the_gateways_key_never_the_callers(stack: Stack, key: Keys) -> None:
    response = post(
        stack.gateway, body(unique("Whose key? [[sim:tokens=4]]")), **{"x-api-key": key.alice}
    )
    assert response.status_code == 200
    seen = httpx.get(f"{stack.simulator}/_sim/api_keys").json()
    assert seen and all(UPSTREAM_KEY in k for k in seen)
    assert not any(key.alice in k for k in seen)
    # Nor is it ever sent back.
    assert UPSTREAM_KEY not in response.text
    assert not any(UPSTREAM_KEY in v for v in response.headers.values())


def test_a_stream_is_its_owners_alone(stack: Stack, key: Keys) -> None:
    mine = post(stack.gateway, body(unique("Mine [[sim:tokens=5]]")), **{"x-api-key": key.alice})
    sid = mine.headers["x-stream-id"]
    theirs = httpx.get(f"{stack.gateway}/v1/streams/{sid}", headers={"x-api-key": key.bob})
    assert_error(theirs, 404, "not_found_error")
    cancel = httpx.delete(f"{stack.gateway}/api/streams/{sid}", headers={"x-api-key": key.bob})
    assert_error(cancel, 404, "not_found_error")
    again = httpx.get(f"{stack.gateway}/v1/streams/{sid}", headers={"x-api-key": key.alice})
    assert text_of(frames(again.content)) == text_of(frames(mine.content))


def test_a_rate_limit_raises_rate_limit_error_with_retry_after(stack: Stack, key: Keys) -> None:
    ask = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": unique("Once")}],
    }
    with sdk(stack, api_key=key.limited) as client:
        client.messages.create(**ask)  # type: ignore[call-overload]
        with pytest.raises(anthropic.RateLimitError) as raised:
            client.messages.create(stream=True, **ask)  # type: ignore[call-overload]
    assert raised.value.type == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_models_are_listed_and_fetched_in_claudes_format(stack: Stack, key: Keys) -> None:
    with sdk(stack, api_key=key.alice) as client:
        listed = [m.id for m in client.models.list(limit=5)]  # pages through them all
        one = client.models.retrieve("claude-sonnet-4-5")
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.models.retrieve("claude-nonexistent-1")
    assert listed == list(DEFAULT_MODELS)
    assert one.id == "claude-sonnet-4-5" and one.display_name == "Claude Sonnet 4.5"
    assert one.type == "model"
    assert missing.value.type == "not_found_error"


def test_count_tokens_is_the_upstreams_count(stack: Stack, key: Keys) -> None:
    conversation = [
        {"role": "user", "content": unique("Count the tokens of this question, please")}
    ]
    with sdk(stack, api_key=key.alice) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=conversation)  # type: ignore[arg-type]
        answered = client.messages.create(model=MODEL, max_tokens=16, messages=conversation)  # type: ignore[arg-type]
        with pytest.raises(anthropic.NotFoundError):
            client.messages.count_tokens(model="claude-nonexistent-1", messages=conversation)  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=stack.simulator, api_key="k") as sim:
        direct = sim.messages.count_tokens(model=MODEL, messages=conversation)  # type: ignore[arg-type]
    assert counted.input_tokens == direct.input_tokens == answered.usage.input_tokens
    assert counted.input_tokens > 0


def test_a_messages_stream_is_accounted_like_any_other(stack: Stack, key: Keys) -> None:
    prompt = unique("Accounted [[sim:tokens=16]] [[sim:drop_after=5]] [[sim:fail_times=1]]")
    answered = post(stack.gateway, body(prompt, stream=False), **{"x-api-key": key.ledger})
    message = answered.json()

    def usage() -> dict[str, object]:
        got = httpx.get(f"{stack.gateway}/api/usage", headers={"x-api-key": key.ledger})
        return got.json()  # type: ignore[no-any-return]

    eventually(lambda: usage()["totals"]["streams"] == 1, what="the stream's ledger row")  # type: ignore[index]
    (row,) = usage()["rows"]  # type: ignore[misc]
    assert row["stream_id"] == answered.headers["x-stream-id"]
    assert (row["principal"], row["model"], row["status"]) == ("dave", MODEL, "done")
    assert row["continuations"] == 1
    assert row["input_tokens"] == message["usage"]["input_tokens"]
    assert row["output_tokens"] == message["usage"]["output_tokens"] == 16
