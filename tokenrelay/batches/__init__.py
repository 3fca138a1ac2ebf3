"""Batches: requests sent together through Claude's Message Batches API, answered
within a day at half the price, their results and cost kept in the ledger's database.

    input.py    the JSONL input: one request per line, each checked as the gateway
                checks a stream's, every error naming its line
    store.py    the SQL: batches, their requests and results, the once-only recording
    upstream.py a deployment's Batch API through the official SDK
    service.py  `Batches`: submit, refresh, collect, cancel, and the refresher task
    client.py   `tokenrelay batch …`: a client of the gateway's /api/batches routes

Nothing here but client.py knows HTTP: `routes/batches.py` is the thin layer over it.
"""
