"""The ledger's Alembic migrations (`env.py`, one file per revision in `versions/`),
applied by `tokenrelay.usage.migrate`; no `alembic.ini` is needed."""
