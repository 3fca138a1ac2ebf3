"""`GET /api/upstreams`: the upstream pool as this instance sees it, each deployment's
state (healthy, cooling until when, probing, full), calls in flight, the last minute's
calls and errors, the rate limit left, and each model's fallbacks.

With authentication on, only an admin may read it (403 otherwise); without, it is as
open as the rest. A deployment's key is shown as where it comes from (`env:NAME`,
`file:PATH`), never as the key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from tokenrelay.errors import PermissionDenied
from tokenrelay.routes.deps import Caller, GatewayDep
from tokenrelay.routes.openapi import errors

router = APIRouter()

_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_OPT_INT, _OPT_STR = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
DEPLOYMENT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "state", "key", "weight", "models", "in_flight"],
    "properties": {
        "name": _STR,
        "kind": {"enum": ["anthropic", "simulator"]},
        "base_url": _OPT_STR,
        "key": {**_STR, "description": "Where the key comes from (env:NAME, file:PATH)."},
        "weight": _NUM,
        "models": {"type": "array", "items": _STR, "description": "Empty: every model."},
        "state": {"enum": ["healthy", "cooling", "probing", "full"]},
        "cooling_until": {"type": ["number", "null"], "description": "Epoch seconds."},
        "reason": _OPT_STR,
        **{k: _INT for k in ("failures", "in_flight", "calls_1m", "errors_1m", "rpm", "tpm")},
        "error_rate_1m": _NUM,
        **{k: _OPT_INT for k in ("requests_remaining", "requests_limit",
                                 "tokens_remaining", "tokens_limit")},
    },
}  # fmt: skip
UPSTREAMS_OK: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Every deployment of the pool, in the order configured, and the "
        "model fallback chains.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["deployments", "fallbacks"],
                    "properties": {
                        "deployments": {"type": "array", "items": DEPLOYMENT},
                        "fallbacks": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": _STR},
                        },
                    },
                }
            }
        },
    }
}


@router.get("/api/upstreams", responses={**UPSTREAMS_OK, **errors(401, 403)})
async def upstreams(gw: GatewayDep, caller: Caller) -> JSONResponse:
    """The upstream deployments' states and the model fallbacks (admin only with auth)."""
    if gw.authenticator.mode != "none" and not caller.admin:
        raise PermissionDenied("The upstream pool's state needs the admin role")
    pool = gw.manager.upstreams
    return JSONResponse(
        {
            "deployments": [state.as_dict() for state in pool.snapshot()],
            "fallbacks": {model: list(chain) for model, chain in pool.config.fallbacks.items()},
        }
    )
