"""The OpenAPI description of `POST /v1/chat/completions`: its request body (as loose
as the route is: whatever the schema rules out, the route refuses too, and every
null it accepts is allowed), the whole completion or the chunk stream it answers
with, and OpenAI's error shape for each error status."""

from __future__ import annotations

from typing import Any

NULL = {"type": "null"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, NULL]}


_TOKENS = _nullable({"type": "integer", "minimum": 1})
_UNIT = _nullable({"type": "number", "minimum": 0, "maximum": 1})
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, NULL]
        },
    },
}
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": {"type": "string", "minLength": 1},
                    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                    "stream": _nullable({"type": "boolean"}),
                    "stream_options": _nullable({"type": "object"}),
                    "max_tokens": _TOKENS,
                    "max_completion_tokens": _TOKENS,
                    "temperature": _UNIT,
                    "top_p": _UNIT,
                    "stop": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                            NULL,
                        ]
                    },
                    "tools": _nullable({"type": "array", "items": {"type": "object"}}),
                    "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}, NULL]},
                    "parallel_tool_calls": _nullable({"type": "boolean"}),
                    "user": _nullable({"type": "string", "minLength": 1}),
                },
            }
        }
    },
}

_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _nullable({"type": "string"}),
                "code": _nullable({"type": "string"}),
            },
        }
    },
}
_WHY = {
    400: "Invalid or unsupported parameter (`param` names it), or Claude refused the request.",
    401: "Missing or invalid credentials.",
    404: "Unknown model.",
    413: "Request body over the size limit.",
    422: "The same Idempotency-Key was used with a different body.",
    429: "Rate limit exceeded, or budget spent; see Retry-After.",
    502: "The upstream failed before the answer began.",
    503: "At capacity, draining, or Claude overloaded through every retry; see Retry-After.",
    504: "The upstream timed out before the answer began.",
}


def responses() -> dict[int | str, dict[str, Any]]:
    docs: dict[int | str, dict[str, Any]] = {
        "200": {
            "description": "A `chat.completion`, or with `stream` a `text/event-stream` of "
            "`chat.completion.chunk` events ending in `data: [DONE]`.",
            "content": {
                "application/json": {"schema": _COMPLETION},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }
    for status, why in _WHY.items():
        docs[str(status)] = {
            "description": why,
            "content": {"application/json": {"schema": _ERROR}},
        }
    return docs
