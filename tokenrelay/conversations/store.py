"""The conversations' SQL: SQLAlchemy Core over the ledger's engine (SQLite or PostgreSQL).

Every method is one transaction. What keeps two sends to one conversation apart, on
however many instances, is the conditional UPDATE of `claim`: it sets the row's
`pending` only where it is NULL (or where a claim was left by an instance that died
before its stream started), and the database says whether it did. No lock is held
while an answer is generated; the claim is replaced by the answer's stream id when its
stream starts, and cleared when its end is stored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Row, and_, delete, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokenrelay.conversations.answer import COMPLETE, PENDING, Content, Outcome
from tokenrelay.conversations.errors import ConversationsUnavailable
from tokenrelay.errors import InvalidRequest
from tokenrelay.usage.schema import conversation_messages, conversations

CLAIM = "claim:"
# A claim this old whose stream never started was left by an instance that died
# between the two: the next send may take it. (Starting a stream takes milliseconds:
# it waits for capacity inside the stream, not before it.)
STALE_CLAIM = timedelta(seconds=60)
RETRY_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    owner: str
    title: str | None
    system: str | None
    model: str
    turns: int
    pending: str | None  # a claim, or the stream id of the answer being generated
    created_at: datetime
    updated_at: datetime

    @property
    def pending_stream_id(self) -> str | None:
        pending = self.pending
        return None if pending is None or pending.startswith(CLAIM) else pending


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" | "assistant"
    content: Content
    status: str
    stream_id: str | None
    error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of the list ended: the last conversation's (updated_at, id)."""

    updated_at: datetime
    id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.updated_at.isoformat(), self.id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            stamp, cid = orjson.loads(raw)
            if not isinstance(cid, str) or not isinstance(stamp, str):
                raise ValueError(cid)
            return cls(_utc(datetime.fromisoformat(stamp)), cid)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise InvalidRequest("before must be a cursor from a previous page's next") from None


def new_conversation_id() -> str:
    return "conv_" + secrets.token_urlsafe(18)


def new_claim() -> str:
    return CLAIM + secrets.token_hex(8)


def now() -> datetime:
    return datetime.now(UTC)


def _utc(stamp: datetime) -> datetime:
    # SQLite keeps no zone: what it gives back is the UTC that was written.
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _conversation(row: Row[Any]) -> Conversation:
    m = row._mapping
    return Conversation(
        m["id"], m["owner"], m["title"], m["system"], m["model"], m["turns"], m["pending"],
        _utc(m["created_at"]), _utc(m["updated_at"]),
    )  # fmt: skip


def _turn(row: Row[Any]) -> Turn:
    m = row._mapping
    return Turn(
        m["role"], orjson.loads(m["content"]), m["status"], m["stream_id"], m["error"],
        _utc(m["created_at"]),
    )  # fmt: skip


class ConversationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise ConversationsUnavailable(
                "The conversations database cannot be reached; try again shortly",
                retry_after=RETRY_AFTER_S,
            ) from exc

    async def create(
        self, owner: str, title: str | None, system: str | None, model: str
    ) -> Conversation:
        at = now()
        conversation = Conversation(new_conversation_id(), owner, title, system, model, 0,
                                    None, at, at)  # fmt: skip
        async with self._begin() as conn:
            await conn.execute(
                insert(conversations), {**dataclasses.asdict(conversation), "pending_since": None}
            )
        return conversation

    async def get(self, owner: str, cid: str) -> Conversation | None:
        async with self._begin() as conn:
            return await self._get(conn, owner, cid)

    async def _get(self, conn: AsyncConnection, owner: str, cid: str) -> Conversation | None:
        c = conversations.c
        query = select(conversations).where(c.id == cid, c.owner == owner)
        row = (await conn.execute(query)).first()
        return None if row is None else _conversation(row)

    async def page(
        self, owner: str, limit: int, before: Cursor | None
    ) -> tuple[list[Conversation], Cursor | None]:
        """The owner's conversations, newest (updated_at) first, after `before`."""
        c = conversations.c
        query = select(conversations).where(c.owner == owner)
        if before is not None:
            query = query.where(
                or_(
                    c.updated_at < before.updated_at,
                    and_(c.updated_at == before.updated_at, c.id < before.id),
                )
            )
        query = query.order_by(c.updated_at.desc(), c.id.desc()).limit(limit + 1)
        async with self._begin() as conn:
            found = [_conversation(r) for r in (await conn.execute(query)).all()]
        if len(found) <= limit:
            return found, None
        last = found[limit - 1]
        return found[:limit], Cursor(last.updated_at, last.id)

    async def turns(self, cid: str) -> list[Turn]:
        m = conversation_messages.c
        query = select(conversation_messages).where(m.conversation_id == cid).order_by(m.position)
        async with self._begin() as conn:
            return [_turn(r) for r in (await conn.execute(query)).all()]

    async def rename(self, owner: str, cid: str, title: str) -> Conversation | None:
        c = conversations.c
        async with self._begin() as conn:
            done = await conn.execute(
                update(conversations)
                .where(c.id == cid, c.owner == owner)
                .values(title=title, updated_at=now())
            )
            return await self._get(conn, owner, cid) if done.rowcount else None

    async def delete(self, owner: str, cid: str) -> bool:
        c, m = conversations.c, conversation_messages.c
        async with self._begin() as conn:
            mine = select(c.id).where(c.id == cid, c.owner == owner)
            # The turns first, in the same transaction (SQLite enforces no foreign keys).
            await conn.execute(delete(conversation_messages).where(m.conversation_id.in_(mine)))
            done = await conn.execute(delete(conversations).where(c.id == cid, c.owner == owner))
            return bool(done.rowcount)

    # -- one send at a time ---------------------------------------------------------

    async def claim(self, owner: str, cid: str, claim: str) -> bool:
        """Mark the conversation as being answered, unless it already is."""
        c = conversations.c
        at = now()
        free = or_(
            c.pending.is_(None),
            and_(c.pending.startswith(CLAIM), c.pending_since < at - STALE_CLAIM),
        )
        async with self._begin() as conn:
            done = await conn.execute(
                update(conversations)
                .where(c.id == cid, c.owner == owner, free)
                .values(pending=claim, pending_since=at)
            )
            return bool(done.rowcount)

    async def release(self, cid: str, claim: str) -> None:
        """Give a claim back: its stream never started."""
        c = conversations.c
        async with self._begin() as conn:
            await conn.execute(
                update(conversations)
                .where(c.id == cid, c.pending == claim)
                .values(pending=None, pending_since=None)
            )

    async def begin_turn(self, cid: str, claim: str, content: Content, stream_id: str) -> bool:
        """Store the user's turn and the answer's, pending on `stream_id`, in place of
        the claim. False when the claim is gone (the conversation was deleted)."""
        c = conversations.c
        at = now()
        async with self._begin() as conn:
            turns = (
                await conn.execute(select(c.turns).where(c.id == cid, c.pending == claim))
            ).scalar_one_or_none()
            if turns is None:
                return False
            await conn.execute(
                update(conversations)
                .where(c.id == cid, c.pending == claim)
                .values(pending=stream_id, pending_since=at, turns=turns + 2, updated_at=at)
            )
            await conn.execute(
                insert(conversation_messages),
                [
                    {"conversation_id": cid, "position": turns, "role": "user",
                     "content": orjson.dumps(content).decode(), "status": COMPLETE,
                     "stream_id": stream_id, "error": None, "created_at": at},
                    {"conversation_id": cid, "position": turns + 1, "role": "assistant",
                     "content": '""', "status": PENDING, "stream_id": stream_id,
                     "error": None, "created_at": at},
                ],
            )  # fmt: skip
        return True

    async def finish_turn(self, cid: str, stream_id: str, outcome: Outcome) -> bool:
        """Store how the answer on `stream_id` ended, once: False when it already was
        (another reader of the same stream got there first)."""
        c, m = conversations.c, conversation_messages.c
        async with self._begin() as conn:
            done = await conn.execute(
                update(conversation_messages)
                .where(
                    m.conversation_id == cid,
                    m.stream_id == stream_id,
                    m.role == "assistant",
                    m.status == PENDING,
                )
                .values(
                    content=orjson.dumps(outcome.content).decode(),
                    status=outcome.status,
                    error=outcome.error,
                )
            )
            if not done.rowcount:
                return False
            await conn.execute(
                update(conversations)
                .where(c.id == cid, c.pending == stream_id)
                .values(pending=None, pending_since=None, updated_at=now())
            )
        return True
