"""A batch's input: JSONL, one request per line, `{"custom_id": "q1", "prompt": "…"}` or
with `"messages"`, and the optional fields of `POST /api/stream-response`.

Every line is checked as the gateway checks a stream's request (`RequestValidator`),
its custom_id as Claude checks one (unique, `^[a-zA-Z0-9_-]{1,64}$`); blank lines are
skipped. All the errors are found, each naming its line, and the batch is refused
whole if there is any: nothing is sent unless every line is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from tokenrelay.errors import InvalidRequest
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.validation import RequestValidator, StreamRequestBody, describe

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000  # Claude's limit for one batch
SHOWN_ERRORS = 20  # in a message; the rest are counted
# Fields of a stream's request that mean nothing for a batch's.
STREAM_ONLY = ("cache", "fallback")


@dataclass(frozen=True, slots=True)
class BatchItem:
    line: int  # 1-based, in the input
    custom_id: str
    request: GenerationRequest


class BatchInputInvalid(InvalidRequest):
    """One or more lines are wrong; `errors` has them all, in line order."""

    def __init__(self, errors: list[str]) -> None:
        shown = "; ".join(errors[:SHOWN_ERRORS])
        more = len(errors) - SHOWN_ERRORS
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))
        self.errors = errors


def _quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_jsonl(
    raw: bytes, validator: RequestValidator, model: str | None = None
) -> list[BatchItem]:
    """The requests of a JSONL batch, or BatchInputInvalid with every line's error.
    `model` is the model of the lines that do not name one (else the gateway's)."""
    errors: list[str] = []
    items: list[BatchItem] = []
    first_on: dict[str, int] = {}
    for number, text in enumerate(raw.split(b"\n"), 1):
        if not text.strip():
            continue
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            errors.append(f"line {number}: not valid JSON")
            continue
        if not isinstance(line, dict):
            errors.append(f"line {number}: must be a JSON object")
            continue
        custom_id = line.pop("custom_id", None)
        problems = _custom_id_problem(custom_id, number, first_on)
        for name in STREAM_ONLY:
            if name in line:
                problems.append(f"line {number}: {name} does not apply to a batch")
        if model is not None and line.get("model") is None:
            line["model"] = model
        try:
            body = StreamRequestBody.model_validate_json(orjson.dumps(line))
            request = validator.from_body(body)
        except ValidationError as exc:
            problems.append(f"line {number}: {describe(exc)}")
        except InvalidRequest as exc:
            problems.append(f"line {number}: {exc.message}")
        else:
            if not problems:
                assert isinstance(custom_id, str)
                items.append(BatchItem(number, custom_id, request))
        errors += problems
    if not items and not errors:
        errors.append("no requests: give one JSON object per line")
    if len(items) > MAX_REQUESTS:
        errors.append(f"{len(items)} requests: a batch takes at most {MAX_REQUESTS}")
    if errors:
        raise BatchInputInvalid(errors)
    return items


def _custom_id_problem(custom_id: object, number: int, first_on: dict[str, int]) -> list[str]:
    if custom_id is None:
        return [f"line {number}: custom_id is required"]
    if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
        return [
            f"line {number}: custom_id {_quoted(custom_id)} must be 1 to 64 letters, "
            "digits, '_' or '-'"
        ]
    first = first_on.setdefault(custom_id, number)
    if first != number:
        return [f"line {number}: custom_id {custom_id!r} is used twice (first on line {first})"]
    return []
