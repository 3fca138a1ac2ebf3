"""A batch's JSONL input, checked line by line: what is accepted (blank lines skipped,
prompt or messages, the optional fields, the model for lines that name none), and every
error named by its line, all of them at once."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.batches.input import SHOWN_ERRORS, BatchInputInvalid, parse_jsonl
from tokenrelay.pricing import ModelTable
from tokenrelay.validation import Limits, RequestValidator

VALIDATOR = RequestValidator(Limits(max_prompt_chars=100), ModelTable(), "claude-haiku-4-5")


def jsonl(*lines: object) -> bytes:
    return b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines)


def errors_of(raw: bytes, model: str | None = None) -> list[str]:
    with pytest.raises(BatchInputInvalid) as caught:
        parse_jsonl(raw, VALIDATOR, model)
    assert caught.value.status == 400
    return caught.value.errors


def test_valid_lines_become_requests_blank_lines_skipped() -> None:
    raw = jsonl(
        {"custom_id": "q1", "prompt": "Hello"},
        b"",
        b"   \r",
        {"custom_id": "q-2_b", "messages": [{"role": "user", "content": "Hi"}],
         "model": "claude-sonnet-4-5", "max_tokens": 50, "system": "Be brief",
         "temperature": 0.5, "stop_sequences": ["END"]},
    ) + b"\n"  # fmt: skip
    first, second = parse_jsonl(raw, VALIDATOR)
    assert (first.line, first.custom_id, first.request.model) == (1, "q1", "claude-haiku-4-5")
    assert first.request.messages == [{"role": "user", "content": "Hello"}]
    assert first.request.max_tokens == 1024  # the validator's default
    assert (second.line, second.custom_id) == (4, "q-2_b")
    r = second.request
    assert (r.model, r.max_tokens, r.system, r.temperature, r.stop_sequences) == (
        "claude-sonnet-4-5", 50, "Be brief", 0.5, ["END"],
    )  # fmt: skip


def test_the_model_given_applies_to_lines_that_name_none() -> None:
    raw = jsonl({"custom_id": "a", "prompt": "x"},
                {"custom_id": "b", "prompt": "y", "model": "claude-opus-4-5"})  # fmt: skip
    a, b = parse_jsonl(raw, VALIDATOR, "claude-sonnet-4-5")
    assert (a.request.model, b.request.model) == ("claude-sonnet-4-5", "claude-opus-4-5")


def test_every_bad_line_is_named_with_its_number() -> None:
    raw = jsonl(
        {"custom_id": "a", "prompt": "fine"},
        b"{not json",
        b"[1, 2]",
        {"prompt": "no id"},
        {"custom_id": "has space", "prompt": "x"},
        {"custom_id": 7, "prompt": "x"},
        {"custom_id": "x" * 65, "prompt": "x"},
        {"custom_id": "a", "prompt": "again"},
        {"custom_id": "c", "prompt": ""},
        {"custom_id": "d", "prompt": "x", "model": "claude-nope"},
        {"custom_id": "e", "prompt": "x" * 101},
        {"custom_id": "f", "prompt": "x", "colour": "red"},
        {"custom_id": "g", "prompt": "x", "cache": False},
        {"custom_id": "h", "prompt": "x", "max_tokens": 0},
        {"custom_id": "i"},
    )
    assert errors_of(raw) == [
        "line 2: not valid JSON",
        "line 3: must be a JSON object",
        "line 4: custom_id is required",
        "line 5: custom_id 'has space' must be 1 to 64 letters, digits, '_' or '-'",
        "line 6: custom_id 7 must be 1 to 64 letters, digits, '_' or '-'",
        f"line 7: custom_id '{'x' * 65}' must be 1 to 64 letters, digits, '_' or '-'",
        "line 8: custom_id 'a' is used twice (first on line 1)",
        "line 9: prompt must not be empty",
        "line 10: Unknown model: claude-nope",
        "line 11: Prompt is too long: 101 characters, the limit is 100",
        "line 12: Unknown field: colour",
        "line 13: cache does not apply to a batch",
        "line 14: Invalid max_tokens: Input should be greater than or equal to 1",
        "line 15: prompt is required (a non-empty string), or send messages",
    ]


def test_a_line_with_two_problems_names_both() -> None:
    raw = jsonl({"custom_id": "a", "prompt": "x"}, {"custom_id": "a", "prompt": " "})
    assert errors_of(raw) == [
        "line 2: custom_id 'a' is used twice (first on line 1)",
        "line 2: prompt must not be empty",
    ]


def test_an_empty_input_is_refused() -> None:
    assert errors_of(b"\n\n  \n") == ["no requests: give one JSON object per line"]


def test_the_message_shows_the_first_errors_and_counts_the_rest() -> None:
    raw = jsonl(*({"custom_id": f"q{i}", "prompt": ""} for i in range(SHOWN_ERRORS + 5)))
    with pytest.raises(BatchInputInvalid) as caught:
        parse_jsonl(raw, VALIDATOR)
    assert len(caught.value.errors) == SHOWN_ERRORS + 5
    shown = "; ".join(f"line {i}: prompt must not be empty" for i in range(1, SHOWN_ERRORS + 1))
    assert caught.value.message == shown + "; and 5 more"
