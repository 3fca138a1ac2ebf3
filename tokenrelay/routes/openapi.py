"""The OpenAPI document, made exact: every status a route can answer with, Claude's
error shape for each, and request schemas that carry the gateway's real limits
(known models, the `max_tokens` ceiling, the prompt length) — so a client generated
from it, or a fuzzer, sees the API as it is."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tokenrelay.validation import Limits, StreamRequestBody

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "additionalProperties": False,
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

_WHY = {
    400: "Invalid request: the message says what to fix.",
    401: "Missing or invalid credentials.",
    403: "Not allowed for this caller (another user's usage needs the admin role).",
    404: "Unknown or expired stream, or another principal's.",
    413: "Request body over the size limit.",
    422: "The same Idempotency-Key was used with a different body.",
    429: "Rate limit or budget exceeded; see Retry-After.",
    503: "At capacity, draining for shutdown, or the store is unreachable; see Retry-After.",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "required": False}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Response docs for the error statuses a route can answer with."""
    docs: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        doc: dict[str, Any] = {
            "description": _WHY[status],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        if status in (429, 503):
            doc["headers"] = _RETRY_AFTER
        docs[str(status)] = doc
    return docs


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


_STR, _INT, _TRUE = {"type": "string"}, {"type": "integer"}, {"const": True}
_USAGE = _obj({"input_tokens": _INT, "output_tokens": _INT})
# The `data` of each `tokens` event, one JSON object per event.
TOKENS_EVENT_DATA: dict[str, Any] = {
    "oneOf": [
        _obj({"stream_id": _STR, "request_id": _STR, "model": _STR}),
        _obj({"queued": _TRUE, "position": _INT}),
        _obj({"token": _STR}),
        _obj({"tool_use_start": _obj({"id": _STR, "name": _STR})}),
        _obj({"tool_input": _STR}),
        _obj({"tool_use": _obj({"id": _STR, "name": _STR, "input": {"type": "object"}})}),
        _obj({"thinking": _STR}),
        _obj({"thinking_signature": _STR}),
        _obj({"reset": _TRUE, "reason": _STR}),
        _obj(
            {"done": _TRUE, "stop_reason": {"type": ["string", "null"]}, "usage": _USAGE},
            cost_usd={"type": "number"},
            cached={"type": "boolean"},
        ),
        _obj({"error": _STR, "code": _STR, "retryable": {"type": "boolean"}}),
    ]
}
SSE_EVENT: dict[str, Any] = {
    "description": "One SSE event: unnamed, `id: <stream_id>:<seq>`, JSON in `data`.",
    **_obj(
        {
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}:[0-9]+$"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": TOKENS_EVENT_DATA,
            },
        },
        event={"const": "message"},
        retry={"type": "integer", "minimum": 0},
    ),
}
SSE_OK: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "A `text/event-stream` of `tokens` events (DESIGN §3.1).",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
}
_CLAUDE_EVENTS = [
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop", "ping", "error",
]  # fmt: skip
CLAUDE_SSE_EVENT: dict[str, Any] = {
    "description": (
        "One event of Claude's stream (ANTHROPIC-PROTOCOL.md): `event: <type>`, its JSON "
        "in `data` with the same `type`; an entry's last frame carries "
        "`id: <stream_id>:<seq>`, for a resume."
    ),
    **_obj(
        {
            "event": {"enum": _CLAUDE_EVENTS},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _obj({"type": {"enum": _CLAUDE_EVENTS}}),
            },
        },
        id={"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}:[0-9]+$"},
        retry={"type": "integer", "minimum": 0},
    ),
}
# A /v1/messages stream's resume: Claude's own events.
CLAUDE_SSE_OK: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Claude's `text/event-stream`.",
        "content": {"text/event-stream": {"schema": CLAUDE_SSE_EVENT}},
    },
}
# POST /v1/messages: the stream, or (`"stream": false`) the whole Message.
CLAUDE_MESSAGE_OK: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Claude's `text/event-stream`, or the Message JSON when not streamed.",
        "content": {
            "text/event-stream": {"schema": CLAUDE_SSE_EVENT},
            "application/json": {
                "schema": _obj(
                    {
                        "id": _STR,
                        "type": {"const": "message"},
                        "role": {"const": "assistant"},
                        "model": _STR,
                        "content": {"type": "array"},
                        "stop_reason": {"type": ["string", "null"]},
                        "usage": _USAGE,
                    }
                )
            },
        },
    },
}


def stream_request_body() -> tuple[dict[str, Any], dict[str, Any]]:
    """The body schema of `POST /api/stream-response` and the definitions it refers to."""
    schema = StreamRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


def install(app: FastAPI, models: list[str], limits: Limits) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, summary=app.summary
            )
            _finish(schema, models, limits)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(schema: dict[str, Any], models: list[str], limits: Limits) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body, definitions = stream_request_body()
    components.update(definitions)
    text = {"type": "string", "pattern": r"\S", "maxLength": limits.max_prompt_chars}
    model = {"type": "string", "enum": models}
    max_tokens = {"type": "integer", "minimum": 1, "maximum": limits.max_tokens_ceiling}
    props = body["properties"]
    props["prompt"] = {"anyOf": [text, {"type": "null"}]}
    props["model"] = {"anyOf": [model, {"type": "null"}]}
    props["max_tokens"] = {"anyOf": [max_tokens, {"type": "null"}]}

    # What `parse_last_event_id` accepts: `<stream_id>:<seq>`.
    event_id = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}:[0-9]{1,12}$"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            # Validation failures are 400s here (Claude's shape), never FastAPI's 422.
            default_422 = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(default_422):
                del operation["responses"]["422"]
            if (path, method) == ("/api/stream-response", "post"):
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                }
            if (path, method) == ("/v1/chat/completions", "post"):
                chat = operation["requestBody"]["content"]["application/json"]["schema"]
                chat = {**chat, "properties": {**chat["properties"], "model": model}}
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": chat}},
                }
            for param in operation.get("parameters", ()):
                if param["name"] == "last-event-id":
                    param["schema"] = event_id
            if (path, method) == ("/api/stream-response", "get"):
                for param in operation["parameters"]:
                    exact = {"prompt": text, "model": model, "max_tokens": max_tokens}
                    if param["name"] in exact:
                        param["schema"] = exact[param["name"]]
                    if param["name"] == "prompt":
                        param["required"] = True
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
