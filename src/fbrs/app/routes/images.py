"""The annotation folder's images: the list with their done state, and the one session of each image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fbrs.app.context import Context
from fbrs.app.errors import SessionNotFoundError

router = APIRouter()


@router.get("/api/images", summary="Images of the annotation folder with their done state")
def list_images(context: Context) -> list[dict[str, Any]]:
    return context.folder().image_list()


@router.post("/api/images/{image_name}/session", summary="Open (or resume) the session of a folder image")
def open_image(image_name: str, context: Context) -> dict[str, Any]:
    context.folder().image_path(image_name)  # 404 for a name outside the folder, before any work
    for _ in range(3):
        opened = context.store.checkout_image(image_name, create=lambda: context.open_folder_session(image_name))
        with opened as session, session.lock:
            if not session.closed:
                return session.state()
    raise SessionNotFoundError(f"the session of {image_name!r} was closed meanwhile; open it again")
