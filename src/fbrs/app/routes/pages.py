"""The web UI's page and the API docs page (both ship with the package; nothing loads from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def api_docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})
