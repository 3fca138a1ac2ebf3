"""OpenAI's chat answer, without a network: the chunk dialect's golden bytes, the whole
`chat.completion`, and the error shapes."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.admission.budgets import BudgetExceeded
from tokenrelay.dialects.openai import ChatChunks
from tokenrelay.dialects.openai_completion import completion
from tokenrelay.dialects.openai_errors import (
    INTERRUPTED,
    OpenAIError,
    from_failed,
    from_gateway_error,
)
from tokenrelay.errors import (
    AuthenticationFailed,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    Overloaded,
    RateLimited,
    RequestTooLarge,
)
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Queued,
    Reset,
    Start,
    Text,
    Thinking,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.streams.log import Entry

MODEL = "claude-haiku-4-5"


# -- the chunk dialect ------------------------------------------------------------


def head(stream_id: str = "s1") -> bytes:
    return (
        b'data: {"id":"chatcmpl-%b","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"claude-haiku-4-5",' % stream_id.encode()
    )


def delta(body: bytes, finish: bytes = b"null") -> bytes:
    return head() + b'"choices":[{"index":0,"delta":%b,"finish_reason":%b}]}\n\n' % (body, finish)


USAGE = {"input_tokens": 12, "output_tokens": 230, "cache_read_input_tokens": 100}
USAGE_JSON = (
    b'{"prompt_tokens":112,"completion_tokens":230,"total_tokens":342,'
    b'"prompt_tokens_details":{"cached_tokens":100,"cache_write_tokens":0}}'
)


def entries(*events: Event, first: int = 0) -> list[Entry]:
    return [Entry(first + i, e) for i, e in enumerate(events)]


def test_chunks_of_a_text_answer_are_golden() -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=True)
    batch = entries(Start("s1", "r1", MODEL), Queued(1), Text('Say "50%"'), Thinking("hm"))
    assert dialect.render(batch) == (
        delta(b'{"role":"assistant","content":""}') + delta(b'{"content":"Say \\"50%\\""}')
    )
    assert dialect.shown and not dialect.complete and dialect.failure is None
    end = dialect.render(entries(Text("!"), Done("end_turn", USAGE, 0.01), first=4))
    assert end == (
        delta(b'{"content":"!"}')
        + delta(b"{}", b'"stop"')
        + head()
        + b'"choices":[],"usage":%b}\n\n' % USAGE_JSON
        + b"data: [DONE]\n\n"
    )
    assert dialect.complete and dialect.final == b"" and dialect.heartbeat == b": ping\n\n"
    assert dialect.render(entries(Text("late"), first=6)) == b""


def test_tool_calls_stream_by_index_with_their_argument_fragments() -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=False)
    batch = entries(
        Start("s1", "r1", MODEL),
        ToolUseStart("toolu_1", "weather"),
        ToolInput('{"city":'),
        ToolInput('"Paris"}'),
        ToolUse("toolu_1", "weather", {"city": "Paris"}),
        ToolUseStart("toolu_2", "time"),
        ToolUse("toolu_2", "time", {}),
        ToolUse("toolu_3", "clock", {"tz": "UTC"}),
        Done("tool_use", USAGE, 0.01),
    )
    role = delta(b'{"role":"assistant","content":""}')
    assert dialect.render(batch) == (
        role
        + opened(0, b"toolu_1", b"weather")
        + delta(b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]}')
        + delta(b'{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]}')
        + opened(1, b"toolu_2", b"time")
        # Opened, and closed with no fragment: its arguments whole.
        + delta(b'{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}')
        # A block that came whole.
        + opened(2, b"toolu_3", b"clock", b'"{\\"tz\\":\\"UTC\\"}"')
        + delta(b"{}", b'"tool_calls"')
        + b"data: [DONE]\n\n"
    )


def opened(index: int, call_id: bytes, name: bytes, arguments: bytes = b'""') -> bytes:
    """The chunk of a tool call as it opens (with all its arguments, when given)."""
    return delta(
        b'{"tool_calls":[{"index":%d,"id":"%b","type":"function",'
        b'"function":{"name":"%b","arguments":%b}}]}' % (index, call_id, name, arguments)
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", b'"stop"'),
        ("stop_sequence", b'"stop"'),
        ("max_tokens", b'"length"'),
        ("tool_use", b'"tool_calls"'),
        ("refusal", b'"content_filter"'),
        (None, b'"stop"'),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish: bytes) -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=False)
    assert dialect.render(entries(Done(stop_reason, USAGE, 0.0))) == (
        delta(b"{}", finish) + b"data: [DONE]\n\n"
    )


def test_a_failed_stream_ends_with_an_error_chunk_and_no_done() -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=True)
    failed = Failed("Upstream overloaded", "overloaded", True, USAGE, 0.01)
    chunk = dialect.render(entries(Start("s1", "r1", MODEL), Text("Hi"), failed))
    assert chunk == (
        delta(b'{"role":"assistant","content":""}')
        + delta(b'{"content":"Hi"}')
        + b'data: {"error":{"message":"Upstream overloaded","type":"server_error",'
        b'"param":null,"code":"overloaded"}}\n\n'
    )
    assert dialect.failure == OpenAIError(
        503, "Upstream overloaded", "server_error", "overloaded", retryable=True
    )
    # Failed before a reader saw anything: the route answers with the HTTP error instead.
    assert not dialect.shown
    assert dialect.interrupted() == b""  # it has ended already


def test_a_reset_after_text_went_out_ends_the_stream_with_an_error() -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=False)
    dialect.render(entries(Start("s1", "r1", MODEL), Text("Half")))
    chunk = dialect.render(entries(Reset(), Text("Other"), first=2))
    error = orjson.loads(chunk.removeprefix(b"data: "))
    assert error == {
        "error": {
            "message": "The upstream answer failed mid-way and had to start again, which a "
            "chat completion stream cannot show; retry the request",
            "type": "server_error",
            "param": None,
            "code": "answer_restarted",
        }
    }
    assert dialect.render(entries(Text("more"), first=4)) == b""


def test_a_reset_in_the_first_batch_drops_what_was_never_sent() -> None:
    dialect = ChatChunks("s1", MODEL, 1700000000, include_usage=False)
    batch = entries(
        Start("s1", "r1", MODEL),
        Text("Half"),
        ToolUseStart("toolu_1", "f"),
        Reset(),
        Text("Whole"),
        ToolUse("toolu_2", "g", {}),
    )
    assert dialect.render(batch) == (
        delta(b'{"role":"assistant","content":""}')
        + delta(b'{"content":"Whole"}')
        + opened(0, b"toolu_2", b"g", b'"{}"')
    )


def test_readers_share_each_entrys_encoding_and_add_only_their_own_frame() -> None:
    log = entries(Start("s1", "r1", MODEL), Text("Hi"), ToolInput("{}"), Done("end_turn", USAGE, 0))
    first = ChatChunks("s1", MODEL, 1700000000, include_usage=True)
    first.render(log)
    kept = [e.encoded("openai", lambda _e: b"never called") for e in log[1:]]
    assert kept == [b'"Hi"', b'"{}"', USAGE_JSON]
    second = ChatChunks("s1", MODEL, 1700000001, include_usage=False)
    chunk = second.render(log)
    assert b'"created":1700000001' in chunk and b'"usage"' not in chunk


# -- the whole completion -------------------------------------------------------


def test_a_whole_completion_drops_what_a_reset_replaced() -> None:
    log = entries(
        Start("s1", "r1", MODEL),
        Text("Half"),
        Reset(),
        Text("Whole"),
        Text(" answer"),
        ToolUseStart("toolu_1", "f"),
        ToolInput('{"a":1}'),
        ToolUse("toolu_1", "f", {"a": 1}),
        Done("tool_use", USAGE, 0.01),
    )
    body = completion(log, "s1", MODEL, 1700000000)
    assert isinstance(body, bytes)
    function = {"name": "f", "arguments": '{"a":1}'}
    assert orjson.loads(body) == {
        "id": "chatcmpl-s1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Whole answer",
                    "refusal": None,
                    "tool_calls": [{"id": "toolu_1", "type": "function", "function": function}],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": orjson.loads(USAGE_JSON),
    }


def test_a_whole_completion_of_only_tool_calls_has_null_content_and_errors_are_errors() -> None:
    only_tools = entries(ToolUse("toolu_1", "f", {}), Done("tool_use", USAGE, 0))
    body = completion(only_tools, "s1", MODEL, 0)
    assert isinstance(body, bytes)
    assert orjson.loads(body)["choices"][0]["message"]["content"] is None
    failed = Failed("Budget exceeded", "budget_exceeded", False, USAGE, 0)
    assert completion(entries(Text("a"), failed), "s1", MODEL, 0) == OpenAIError(
        429, "Budget exceeded", "insufficient_quota", "budget_exceeded"
    )
    assert completion(entries(Text("a")), "s1", MODEL, 0) is INTERRUPTED


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "kind", "code"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error", None),
        (AuthenticationFailed("who?"), 401, "invalid_request_error", "invalid_api_key"),
        (RequestTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
        (IdempotencyConflict("again"), 422, "invalid_request_error", "idempotency_conflict"),
        (RateLimited("slow down", retry_after=7), 429, "requests", "rate_limit_exceeded"),
        (BudgetExceeded("spent"), 429, "insufficient_quota", "insufficient_quota"),
        (Overloaded("full", retry_after=1), 503, "server_error", "overloaded"),
    ],
)
def test_gateway_errors_in_openais_words(
    exc: GatewayError, status: int, kind: str, code: str | None
) -> None:
    error = from_gateway_error(exc)
    assert (error.status, error.type, error.code, error.retry_after) == (
        status,
        kind,
        code,
        exc.retry_after,
    )
    assert orjson.loads(error.body()) == {
        "error": {"message": exc.message, "type": kind, "param": None, "code": code}
    }


@pytest.mark.parametrize(
    ("code", "status", "kind", "openai_code"),
    [
        ("invalid_request", 400, "invalid_request_error", "invalid_request"),
        ("not_found", 404, "invalid_request_error", "model_not_found"),
        ("rate_limit", 429, "requests", "rate_limit"),
        ("overloaded", 503, "server_error", "overloaded"),
        ("api", 502, "server_error", "api"),
        ("incomplete_block", 502, "server_error", "incomplete_block"),
        ("internal", 500, "server_error", "internal"),
    ],
)
def test_failed_streams_in_openais_words(
    code: str, status: int, kind: str, openai_code: str
) -> None:
    error = from_failed(Failed("m", code, False, USAGE, 0))
    assert (error.status, error.type, error.code) == (status, kind, openai_code)
