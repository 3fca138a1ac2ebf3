"""`/api/conversations…`: conversations the gateway keeps, and a new turn in one,
answered as a `tokens` stream like `POST /api/stream-response`.

A conversation is its creator's: anyone else gets the 404 of one that does not exist.
The core is `tokenrelay.conversations`; this layer parses, checks who asks, and starts
the answer's stream through `routes.streaming.open_stream` like every streaming route.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from tokenrelay.conversations.errors import ConversationsUnavailable
from tokenrelay.conversations.service import Conversations
from tokenrelay.conversations.store import Conversation, Cursor, Turn
from tokenrelay.dialects.tokens import TokensDialect
from tokenrelay.errors import InvalidRequest
from tokenrelay.gateway import Gateway
from tokenrelay.middleware.request_id import request_id
from tokenrelay.routes.deps import Caller, GatewayDep
from tokenrelay.routes.sse import SSEResponse
from tokenrelay.routes.stream import ROUTE
from tokenrelay.routes.streaming import cache_allowed, open_stream, respond_started
from tokenrelay.validation import Message, StreamRequestBody, describe

router = APIRouter()

RequestId = Annotated[str, Depends(request_id)]
OFF = "Conversations need a database (TOKENRELAY_DATABASE_URL)"
MAX_TITLE = 200
T = TypeVar("T", bound=BaseModel)


class NewConversation(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    title: str | None = Field(default=None, max_length=MAX_TITLE)
    system: str | None = None
    model: str | None = None


class Rename(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    title: str = Field(max_length=MAX_TITLE)


class NewTurn(BaseModel):
    """A new user turn, and the optional fields of `POST /api/stream-response` (the
    model and the system prompt are the conversation's)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    content: str | list[Any]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    cache: bool | None = None


def _parse(model: type[T], raw: bytes) -> T:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def conversations_of(gw: Gateway) -> Conversations:
    if gw.conversations is None:
        raise ConversationsUnavailable(OFF)
    return gw.conversations


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "model": c.model, "created_at": stamp(c.created_at),
            "updated_at": stamp(c.updated_at), "turns": c.turns}  # fmt: skip


def whole(c: Conversation) -> dict[str, Any]:
    return {**summary(c), "system": c.system, "pending_stream_id": c.pending_stream_id}


def message(t: Turn) -> dict[str, Any]:
    return {"role": t.role, "content": t.content, "status": t.status, "stream_id": t.stream_id,
            "error": t.error, "created_at": stamp(t.created_at)}  # fmt: skip


@router.post("/api/conversations", include_in_schema=False)
async def create(request: Request, gw: GatewayDep, caller: Caller) -> JSONResponse:
    """A new, empty conversation (201)."""
    service = conversations_of(gw)
    body = _parse(NewConversation, await request.body())
    model = body.model or gw.validator.default_model
    if model not in gw.validator.models:
        raise InvalidRequest(f"Unknown model: {model[:100]}")
    conversation = await service.store.create(caller.id, body.title, body.system, model)
    return JSONResponse(whole(conversation), status_code=201)


@router.get("/api/conversations", include_in_schema=False)
async def list_conversations(
    gw: GatewayDep,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(max_length=400)] = None,
) -> JSONResponse:
    """The caller's conversations, most recently updated first; `next` is the cursor
    of the page after this one (`before=`), null on the last."""
    service = conversations_of(gw)
    cursor = Cursor.decode(before) if before is not None else None
    found, after = await service.store.page(caller.id, limit, cursor)
    return JSONResponse(
        {"data": [summary(c) for c in found], "next": after.encode() if after else None}
    )


@router.get("/api/conversations/{cid}", include_in_schema=False)
async def read(gw: GatewayDep, caller: Caller, cid: str) -> JSONResponse:
    """The conversation and its turns, oldest first; `pending_stream_id` is the stream
    of the answer still being generated (resume it at GET /api/streams/{id})."""
    conversation, turns = await conversations_of(gw).read(caller.id, cid)
    return JSONResponse({**whole(conversation), "messages": [message(t) for t in turns]})


@router.patch("/api/conversations/{cid}", include_in_schema=False)
async def rename(request: Request, gw: GatewayDep, caller: Caller, cid: str) -> JSONResponse:
    service = conversations_of(gw)
    body = _parse(Rename, await request.body())
    renamed = await service.store.rename(caller.id, cid, body.title)
    if renamed is None:
        await service.owned(caller.id, cid)  # the 404
    assert renamed is not None
    return JSONResponse(whole(renamed))


@router.delete("/api/conversations/{cid}", include_in_schema=False)
async def delete(gw: GatewayDep, caller: Caller, cid: str) -> Response:
    service = conversations_of(gw)
    if not await service.store.delete(caller.id, cid):
        await service.owned(caller.id, cid)  # the 404
    return Response(status_code=204)


@router.post("/api/conversations/{cid}/messages", include_in_schema=False)
async def send(
    request: Request, gw: GatewayDep, caller: Caller, request_id: RequestId, cid: str
) -> SSEResponse:
    """A new user turn; its answer streams as from `POST /api/stream-response`, and is
    kept in the conversation when its stream ends (409 while the last one is pending)."""
    service = conversations_of(gw)
    raw = await request.body()
    turn = _parse(NewTurn, raw)
    claim = await service.claim(caller.id, cid)
    try:
        conversation = await service.owned(caller.id, cid)
        history = await service.history(conversation, turn.content)
        fields = turn.model_dump(exclude={"content", "cache"}, exclude_none=True)
        body = StreamRequestBody(
            messages=[Message.model_validate(m) for m in history.messages],
            model=conversation.model,
            system=conversation.system,
            **fields,
        )
        generation = gw.validator.from_body(body)
        started = await open_stream(
            gw, request, caller, request_id, generation, route=ROUTE, body=raw,
            use_cache=turn.cache is not False and cache_allowed(request),
        )  # fmt: skip
    except BaseException:
        await service.release(cid, claim)
        raise
    await service.begin(cid, claim, turn.content, started.stream_id)
    dialect = TokensDialect(started.stream_id, gw.settings.client_retry_ms)
    return respond_started(gw, started, dialect)
