"""The models the gateway serves, as Claude's `GET /v1/models` lists them.

The gateway knows a model by its id (and its prices); its display name is made from
the id (`claude-sonnet-4-5` → "Claude Sonnet 4.5"), and its release date, which it
does not know, is given as the epoch.
"""

from __future__ import annotations

from typing import Any

import orjson

UNKNOWN_DATE = "1970-01-01T00:00:00Z"


def display_name(model: str) -> str:
    words: list[str] = []
    version: list[str] = []
    for part in model.split("-"):
        if part.isdigit():
            version.append(part)
        else:
            if version:
                words.append(".".join(version))
                version = []
            words.append(part.capitalize())
    if version:
        words.append(".".join(version))
    return " ".join(words)


def _info(model: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model,
        "display_name": display_name(model),
        "created_at": UNKNOWN_DATE,
    }


def model_info(model: str) -> bytes:
    return orjson.dumps(_info(model))


def models_page(
    models: list[str], limit: int, after_id: str | None, before_id: str | None
) -> bytes:
    """A page of `models` (in the order given), as Claude pages its list: the ones
    after `after_id` or before `before_id`, at most `limit`."""
    if after_id is not None and after_id in models:
        models = models[models.index(after_id) + 1 :]
    if before_id is not None and before_id in models:
        models = models[: models.index(before_id)]
        page, more = models[-limit:], len(models) > limit
    else:
        page, more = models[:limit], len(models) > limit
    return orjson.dumps(
        {
            "data": [_info(m) for m in page],
            "has_more": more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )
