"""Fuzzing the HTTP surface of a real gateway: schemathesis against its own OpenAPI
document, and hypothesis against the inputs a client controls (Last-Event-ID, query
strings, bodies). Whatever arrives, the answer is never a 5xx and every error is in
Claude's JSON shape."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Stack, run_stack
from tests.support.auth import create_key

# Short answers keep the many generated valid requests quick.
FUZZ_ENV = {"TOKENRELAY_MAX_TOKENS_CEILING": "64", "TOKENRELAY_DEFAULT_MAX_TOKENS": "16"}


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # An admin's key, so that every route, GET /api/upstreams too, answers more than 403.
    keys_file = tmp / "keys.txt"
    key = create_key(keys_file, "fuzzer", "--admin")
    args = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    with run_stack(tmp, *args, **FUZZ_ENV) as s:
        yield s, key


def test_the_api_matches_its_openapi_document(
    fuzz_gateway: tuple[Stack, str], tmp_path: Path
) -> None:
    """schemathesis, every phase (examples, coverage, fuzzing, stateful) and every check:
    no 5xx, statuses, content types and headers as documented, bodies matching their
    schemas, schema-invalid input rejected, `Allow` on 405s, auth not ignored. Not
    checked: that every schema-valid request is accepted — rules such as "the first
    message is the user's" or the prompt length summed over messages are not expressible
    in JSON Schema, and the gateway rightly refuses those with a 400; and that a
    resource is gone after its DELETE — `DELETE /api/streams/{id}` cancels a stream,
    whose log stays readable (ending in its `cancelled` event) until its TTL."""
    stack, key = fuzz_gateway
    result = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{stack.gateway}/openapi.json",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free",
         "--header", f"x-api-key: {key}", "--max-examples", "40", "--seed", "20261125",
         "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    summary = result.stdout[result.stdout.index("SUMMARY") :]
    assert "Tested: 16" in summary and "failed" not in summary, summary
    generated, passed = re.search(r"(\d+) generated, (\d+) passed", summary).groups()  # type: ignore[union-attr]
    assert int(generated) == int(passed) > 300


def assert_refused_cleanly(response: httpx.Response) -> None:
    """A 4xx in Claude's shape; or a 200 stream, which the caller then abandons."""
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert response.headers["content-type"].startswith("text/event-stream")
        return
    response.read()
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["message"]


# Any field value HTTP allows (RFC 9110: visible ASCII, obs-text, inner spaces and tabs).
# Bytes HTTP forbids never reach the gateway: the HTTP parser answers those with 400.
field_bytes = [*range(0x21, 0x7F), *range(0x80, 0x100)]
header_values = st.binary(min_size=1, max_size=120).map(
    lambda b: bytes(field_bytes[c % len(field_bytes)] if i in (0, len(b) - 1) or c not in (9, 32)
                    else c for i, c in enumerate(b))
)  # fmt: skip
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(last_event_id=header_values, route=st.sampled_from(["post", "get", "resume"]))
def test_any_last_event_id_is_answered_cleanly(
    fuzz_gateway: tuple[Stack, str], last_event_id: bytes, route: str
) -> None:
    stack, key = fuzz_gateway
    headers = {"x-api-key": key.encode(), "last-event-id": last_event_id}
    requests = {
        "post": ("POST", "/api/stream-response"),
        "get": ("GET", "/api/stream-response?prompt=hi"),
        "resume": ("GET", "/api/streams/some-stream-id"),
    }
    method, url = requests[route]
    with (
        httpx.Client(base_url=stack.gateway, timeout=30) as client,
        client.stream(method, url, headers=headers) as response,
    ):
        assert_refused_cleanly(response)
        assert response.status_code in (400, 404)


@FUZZ
@given(params=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=200)), max_size=6))
def test_any_query_string_is_answered_cleanly(
    fuzz_gateway: tuple[Stack, str], params: list[tuple[str, str]]
) -> None:
    stack, key = fuzz_gateway
    with httpx.Client(base_url=stack.gateway, timeout=30) as client:
        for path in ["/api/stream-response", "/api/streams/x"]:
            with client.stream("GET", path, params=params, headers={"x-api-key": key}) as r:
                assert_refused_cleanly(r)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Bodies shaped like a real request, each field possibly of the wrong type.
near_miss_bodies = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=50) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", ""]) | json_values},
                optional={"content": st.text(max_size=30) | json_values},
            ),
            max_size=4,
        )
        | json_values,
        "model": st.sampled_from(["claude-haiku-4-5", "claude-nope"]) | json_values,
        "max_tokens": st.integers(-5, 100) | json_values,
        "system": json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "stop_sequences": json_values,
        "tools": json_values,
        "metadata": json_values,
    },
)


@FUZZ
@given(
    body=st.binary(max_size=300)
    | json_values.map(lambda v: httpx.Request("POST", "/", json=v).content)
    | near_miss_bodies.map(lambda v: httpx.Request("POST", "/", json=v).content)
)
def test_any_body_is_answered_cleanly(fuzz_gateway: tuple[Stack, str], body: bytes) -> None:
    stack, key = fuzz_gateway
    headers = {"x-api-key": key, "content-type": "application/json"}
    with (
        httpx.Client(base_url=stack.gateway, timeout=30) as client,
        client.stream("POST", "/api/stream-response", content=body, headers=headers) as r,
    ):
        assert_refused_cleanly(r)
