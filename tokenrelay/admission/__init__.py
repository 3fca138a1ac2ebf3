"""Who may stream and how much: rate limits per principal (and, as they land, the
concurrency caps and queue, budgets)."""
