"""Errors on `/v1/chat/completions`, as the official `openai` SDK sees them: OpenAI's
JSON shape and statuses, so each raises the class it would against OpenAI —
BadRequestError, AuthenticationError, NotFoundError, RateLimitError,
InternalServerError before a stream starts, APIError from a stream that fails
mid-way (which never ends with `[DONE]`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Stack, run_stack, unique
from tests.support.auth import api_key_auth
from tests.support.clock import fresh_minute

MODEL = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("openai_errors")) as stack:
        yield stack


def client(stack: Stack, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=api_key, max_retries=0)


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return {"message": message, "type": kind, "param": param, "code": code}


def test_a_request_that_cannot_be_served_raises_bad_request_naming_the_parameter(
    gateway: Stack,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model=MODEL, messages=user("Hi"), n=2)
    error = caught.value
    assert (error.status_code, error.type, error.param, error.code) == (
        400,
        "invalid_request_error",
        "n",
        "unsupported_parameter",
    )
    assert error.body == error_body(
        "n is not supported: only one choice (n = 1) is generated",
        "invalid_request_error",
        "unsupported_parameter",
        "n",
    )
    # Without the SDK: the same shape, for a body that is not even JSON.
    response = httpx.post(f"{gateway.gateway}/v1/chat/completions", content=b"{nope")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-should-retry"] == "false" and response.headers["x-request-id"]
    assert response.json() == {
        "error": error_body("Request body is not valid JSON", "invalid_request_error", None)
    }


def test_an_unknown_model_raises_not_found(gateway: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).chat.completions.create(model="gpt-4o", messages=user("Hi"), stream=True)
    assert caught.value.code == "model_not_found"
    assert caught.value.message == (
        "Error code: 404 - The model `gpt-4o` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusal_before_the_answer_is_the_http_error_openai_would_send(
    gateway: Stack, stream: bool
) -> None:
    sdk = client(gateway)
    # Claude refuses the request: nothing to retry, and the client's request is at fault.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=MODEL, messages=user(unique("Bad [[sim:status=400]]")), stream=stream
        )
    assert (refused.value.type, refused.value.code) == ("invalid_request_error", "invalid_request")
    assert refused.value.response.headers["x-stream-id"]
    # Claude stays overloaded through the gateway's retries: a 503 the client may retry.
    with pytest.raises(openai.InternalServerError) as overloaded:
        sdk.chat.completions.create(
            model=MODEL, messages=user(unique("Busy [[sim:status=529]]")), stream=stream
        )
    assert overloaded.value.status_code == 503
    assert (overloaded.value.type, overloaded.value.code) == ("server_error", "overloaded")
    assert overloaded.value.response.headers["x-should-retry"] == "true"


async def test_a_stream_that_fails_mid_way_ends_with_an_error_chunk_and_never_done(
    gateway: Stack,
) -> None:
    # Every attempt breaks after 3 deltas: the first, then 3 continuations, then it ends.
    words = unique("Keeps breaking [[sim:tokens=30]]")
    prompt = f"{words} [[sim:error_after=3]]"
    stream = client(gateway).chat.completions.create(
        model=MODEL, messages=user(prompt), stream=True
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert type(caught.value) is openai.APIError
    assert (caught.value.type, caught.value.code) == ("server_error", "overloaded")
    sdk = anthropic.AsyncAnthropic(base_url=gateway.simulator, api_key="k", max_retries=0)
    async with sdk:
        whole = await sdk.messages.create(model=MODEL, max_tokens=1024, messages=user(words))  # type: ignore[arg-type]
    assert "".join(texts) == whole.content[0].text[: len("".join(texts))]  # type: ignore[union-attr]
    assert len(texts) == 1 + 4 * 3  # the role chunk, then 3 deltas from each of 4 attempts
    # On the wire: the last line is the error; nothing says the answer was complete.
    body = {"model": MODEL, "messages": user(prompt.replace("breaking", "failing")), "stream": True}
    async with httpx.AsyncClient(base_url=gateway.gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=body)
        fine = {"model": MODEL, "messages": user(unique("Fine")), "stream": True}
        ended_well = await http.post("/v1/chat/completions", json=fine)
    assert response.status_code == 200
    frames = response.text.split("\n\n")
    assert frames[-1] == "" and all(f.startswith("data: {") for f in frames[:-1])
    assert b"[DONE]" not in response.content and '"finish_reason":"' not in response.text
    assert frames[-2].startswith('data: {"error":{"message":"')
    # A stream that ends well ends with [DONE].
    assert ended_well.text.endswith('"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


def test_with_auth_on_a_gateway_key_is_required_and_the_sdks_bearer_works(
    tmp_path: Path,
) -> None:
    flags, key = api_key_auth(tmp_path, "alice")
    with run_stack(tmp_path, *flags, TOKENRELAY_RATE_LIMIT_RPM="2") as stack:
        fresh_minute()
        with pytest.raises(openai.AuthenticationError) as caught:
            client(stack, api_key="trk_wrong_key").chat.completions.create(
                model=MODEL, messages=user("Hi")
            )
        assert (caught.value.type, caught.value.code) == (
            "invalid_request_error",
            "invalid_api_key",
        )
        response = httpx.post(
            f"{stack.gateway}/v1/chat/completions", json={"model": MODEL, "messages": user("Hi")}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        sdk = client(stack, api_key=key)
        prompt = unique("Authorized")
        completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt))
        assert completion.choices[0].finish_reason == "stop"
        chunks = list(sdk.chat.completions.create(model=MODEL, messages=user(prompt), stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        # Two requests a minute: the third is refused, with when to come back.
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.chat.completions.create(model=MODEL, messages=user(prompt))
        error = limited.value
        assert (error.type, error.code) == ("requests", "rate_limit_exceeded")
        assert error.body == error_body(
            "Rate limit exceeded: 2 requests per minute", "requests", "rate_limit_exceeded"
        )
        assert 1 <= int(error.response.headers["retry-after"]) <= 60
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert stack.sim_stats()["requests"] == 2  # the refused one never reached Claude


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
     "stop", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "n", "user"]
)  # fmt: skip
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "x"])},
    optional={"content": _json, "tool_calls": _json, "tool_call_id": _json},
)
_bodies = st.one_of(
    st.binary(max_size=60),
    st.dictionaries(_fields, _json, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"model": st.just(MODEL), "messages": st.lists(_message, min_size=1, max_size=4)},
        optional={"stream": st.booleans(), "tools": _json, "tool_choice": _json, "stop": _json},
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies)
def test_any_body_is_answered_cleanly_in_openais_shape(gateway: Stack, body: bytes) -> None:
    """Whatever the body, never a 5xx: an answer, or a 4xx in OpenAI's error shape."""
    headers = {"content-type": "application/json"}
    with httpx.stream(
        "POST", f"{gateway.gateway}/v1/chat/completions", content=body, headers=headers, timeout=30
    ) as response:
        response.read()
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
