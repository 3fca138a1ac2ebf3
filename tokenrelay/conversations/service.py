"""`Conversations`: the store, the history rule and the watcher, as the routes use them.

A send is: `claim` (409 while an answer is pending), `history` (what to ask), the
route starts the stream as every streaming route does, then `begin` (the user's turn
and the pending answer stored, the watch started) — or `release` if the stream never
started. The answer is stored when its stream ends (`Watcher`), or when the
conversation is next read and its log says it has ended (`resolve`).
"""

from __future__ import annotations

import logging

from tokenrelay.conversations.answer import Content, Outcome
from tokenrelay.conversations.errors import ConversationBusy, ConversationNotFound
from tokenrelay.conversations.history import Fit, History, build
from tokenrelay.conversations.store import (
    Conversation,
    ConversationStore,
    Turn,
    new_claim,
)
from tokenrelay.conversations.watcher import Watcher, read_to_end
from tokenrelay.observability.log import log_event
from tokenrelay.streams.log import StreamLog

log = logging.getLogger("tokenrelay.conversations")

BUSY = "A reply is still being generated in this conversation"
# A claim looks again after it finds the previous answer stored meanwhile; a third try
# finding it taken again means another send won.
CLAIM_TRIES = 3


class Conversations:
    def __init__(self, store: ConversationStore, stream_log: StreamLog, fit: Fit) -> None:
        self.store = store
        self.fit = fit
        self._log = stream_log
        self.watcher = Watcher(stream_log, self._finish)

    async def aclose(self) -> None:
        await self.watcher.aclose()

    async def owned(self, owner: str, cid: str) -> Conversation:
        conversation = await self.store.get(owner, cid)
        if conversation is None:
            raise ConversationNotFound(f"No conversation {cid[:64]!r}: unknown, or not yours")
        return conversation

    async def read(self, owner: str, cid: str) -> tuple[Conversation, list[Turn]]:
        """The conversation and its turns, its pending answer stored first if its
        stream has ended (its watcher may have died with its instance)."""
        conversation = await self.owned(owner, cid)
        if await self.resolve(conversation):
            conversation = await self.owned(owner, cid)
        return conversation, await self.store.turns(cid)

    async def resolve(self, conversation: Conversation) -> bool:
        """Store the pending answer if its log shows its end (or shows the stream is
        gone); else make sure a watcher here follows it. True when it has ended (and
        is stored, by this call or another reader of its stream)."""
        stream_id = conversation.pending_stream_id
        if stream_id is None:
            return False
        outcome = await read_to_end(self._log, stream_id, wait=0)
        if outcome is None:
            self.watcher.watch(conversation.id, stream_id)
            return False
        await self.store.finish_turn(conversation.id, stream_id, outcome)
        return True

    async def claim(self, owner: str, cid: str) -> str:
        """The right to send the next turn (ConversationBusy while an answer is
        pending; ConversationNotFound for another's)."""
        claim = new_claim()
        for _ in range(CLAIM_TRIES):
            if await self.store.claim(owner, cid, claim):
                return claim
            conversation = await self.owned(owner, cid)
            # Free now: the answer was being stored as the claim looked (an update that
            # matches no row takes no lock, so it read the row from before that commit).
            # Or its answer has ended with nobody left to store it: store it here.
            if conversation.pending is not None and not await self.resolve(conversation):
                break
        raise ConversationBusy(BUSY)

    async def history(self, conversation: Conversation, new: Content) -> History:
        return build(await self.store.turns(conversation.id), new, conversation.system, self.fit)

    async def release(self, cid: str, claim: str) -> None:
        await self.store.release(cid, claim)

    async def begin(self, cid: str, claim: str, content: Content, stream_id: str) -> bool:
        begun = await self.store.begin_turn(cid, claim, content, stream_id)
        if begun:
            self.watcher.watch(cid, stream_id)
        return begun

    async def _finish(self, cid: str, stream_id: str, outcome: Outcome) -> None:
        if await self.store.finish_turn(cid, stream_id, outcome):
            log_event(
                log, "conversation_turn", conversation_id=cid, stream_id=stream_id,
                status=outcome.status,
            )  # fmt: skip
