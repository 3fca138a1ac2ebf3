"""Conversations the gateway remembers: their turns kept in the ledger's database,
each new answer a stream like any other.

    store.py    the SQL: conversations, their turns, the claim that keeps sends apart
    history.py  the stored turns as a request's messages: which are sent, trimmed to fit
    answer.py   a stream's log entries as the turn to store (its content and status)
    watcher.py  background readers of the streams being answered, to store their end
    service.py  `Conversations`: what the routes call

Nothing here knows HTTP: `routes/conversations.py` is the thin layer over it.
"""
