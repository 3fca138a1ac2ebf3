"""The browser side: the chat page at `/`, its static files, and what the page needs
to know about this gateway (`/api/info`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from tokenrelay import __version__
from tokenrelay.routes.deps import GatewayDep

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

router = APIRouter()
static = StaticFiles(directory=WEB_DIR)


@router.get("/", include_in_schema=False)
async def chat_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"cache-control": "no-cache"})


@router.get("/tokenrelay.js", include_in_schema=False)
async def js_client() -> FileResponse:
    """The JS client at a stable path, for any page to import."""
    return FileResponse(
        WEB_DIR / "tokenrelay.js",
        media_type="text/javascript",
        headers={"cache-control": "no-cache"},
    )


@router.get("/api/info")
async def info(gw: GatewayDep) -> JSONResponse:
    """What a client needs before its first request: the auth mode and the models."""
    settings = gw.settings
    return JSONResponse(
        {
            "version": __version__,
            "auth": settings.auth,
            "model": settings.model,
            "models": sorted(gw.models.models),
            "max_prompt_chars": settings.max_prompt_chars,
        }
    )
