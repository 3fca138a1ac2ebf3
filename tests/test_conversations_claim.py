"""The claim that keeps two sends to one conversation apart, against a real SQLite file,
at the moment it races the storing of the previous answer.

An UPDATE that matches no row takes no write lock: a claim can read the row as it was
just before another connection commits the answer, and the conversation is free by the
time the claim looks again. The next send must get its turn then, not a 409."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tokenrelay.conversations.errors import ConversationBusy
from tokenrelay.conversations.history import Fit
from tokenrelay.conversations.service import BUSY, Conversations
from tokenrelay.conversations.store import ConversationStore, new_claim
from tokenrelay.events import Done, Start, Text
from tokenrelay.streams.log import StreamMeta
from tokenrelay.streams.memory import MemoryLog
from tokenrelay.usage import migrate
from tokenrelay.usage.database import open_engine

OWNER = "alice"
STREAM = "stream-of-the-first-answer"


@pytest.fixture
async def log() -> AsyncIterator[MemoryLog]:
    log = MemoryLog(stream_ttl=60)
    yield log
    await log.aclose()


@pytest.fixture
async def service(tmp_path: Path, log: MemoryLog) -> AsyncIterator[Conversations]:
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path}/conv.db")
    await migrate.upgrade(engine)
    conversations = Conversations(ConversationStore(engine), log, Fit(100_000, 100_000, 100))
    yield conversations
    await conversations.aclose()
    await engine.dispose()


async def answering(service: Conversations) -> str:
    """A conversation whose first answer is pending on STREAM (no watcher here)."""
    store = service.store
    cid = (await store.create(OWNER, None, None, "claude-haiku-4-5")).id
    claim = new_claim()
    assert await store.claim(OWNER, cid, claim)
    assert await store.begin_turn(cid, claim, "Hello", STREAM)
    return cid


def store_answer_before_the_next_read(service: Conversations, db: Path) -> list[str]:
    """As another connection does when its watcher stores the answer: commit it right
    after the claim's UPDATE found the row taken, before the claim reads the row again.
    Returns the log of what happened, in order."""
    happened: list[str] = []

    def after(_c: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("UPDATE conversations SET pending=") and "pending_since" in (
            statement
        ):
            happened.append(f"claim updated {cursor.rowcount}")

    def before(_c: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if happened == ["claim updated 0"] and statement.startswith("SELECT"):
            other = sqlite3.connect(db)
            with other:  # one transaction, as `ConversationStore.finish_turn`
                other.execute(
                    "UPDATE conversation_messages SET status = 'complete', content = '\"Hi\"'"
                    " WHERE stream_id = ? AND role = 'assistant'",
                    (STREAM,),
                )
                other.execute(
                    "UPDATE conversations SET pending = NULL, pending_since = NULL"
                    " WHERE pending = ?",
                    (STREAM,),
                )
            other.close()
            happened.append("answer stored elsewhere")

    sync_engine = service.store.engine.sync_engine
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "before_cursor_execute", before)
    return happened


async def test_a_claim_that_raced_the_answer_being_stored_gets_the_turn(
    service: Conversations, tmp_path: Path
) -> None:
    cid = await answering(service)
    happened = store_answer_before_the_next_read(service, tmp_path / "conv.db")
    claim = await service.claim(OWNER, cid)
    assert happened == ["claim updated 0", "answer stored elsewhere", "claim updated 1"]
    conversation = await service.owned(OWNER, cid)
    assert conversation.pending == claim
    assert [(t.role, t.content, t.status) for t in await service.store.turns(cid)] == [
        ("user", "Hello", "complete"),
        ("assistant", "Hi", "complete"),
    ]


async def test_a_claim_while_the_answer_is_still_generating_is_busy(
    service: Conversations, log: MemoryLog
) -> None:
    cid = await answering(service)
    await log.create(StreamMeta(STREAM, OWNER, "req_1", "claude-haiku-4-5", "fp", 0.0))
    await log.append(STREAM, Start(STREAM, "req_1", "claude-haiku-4-5"))
    await log.append(STREAM, Text("Hi"))
    with pytest.raises(ConversationBusy, match=BUSY):
        await service.claim(OWNER, cid)
    # Once its stream ends, the next claim stores the answer from the log and goes on.
    await log.append(STREAM, Done("end_turn", {"input_tokens": 1, "output_tokens": 1}, 0.0))
    claim = await service.claim(OWNER, cid)
    assert (await service.owned(OWNER, cid)).pending == claim
    assert [(t.content, t.status) for t in await service.store.turns(cid)] == [
        ("Hello", "complete"),
        ("Hi", "complete"),
    ]
