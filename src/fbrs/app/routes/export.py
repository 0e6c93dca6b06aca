"""What leaves a session: a mask (current, one finished object or all as instance ids) as PNG, COCO RLE
or polygons, and saving a folder image's files (instance PNG, click log, COCO)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from fbrs.app.context import Context
from fbrs.app.errors import AnnotationConflictError
from fbrs.app.payloads import MaskFormat, label_map_response, mask_response
from fbrs.app.sessions import AnnotationSession
from fbrs.app.validation import parse_object

router = APIRouter()


@router.post("/api/sessions/{session_id}/save", summary="Save a folder image's PNG, click log and COCO")
def save(session_id: str, context: Context) -> dict[str, Any]:
    def action(session: AnnotationSession) -> dict[str, Any]:
        if context.project is None or session.image_name is None:
            raise AnnotationConflictError(
                "only sessions of folder images are saved to disk; fetch uploaded sessions' masks with "
                "GET /api/sessions/{id}/mask"
            )
        session.mark_done(True)
        return {**session.state(), "files": context.project.save(session.to_annotation())}

    return context.use(session_id, action)


@router.get("/api/sessions/{session_id}/mask", summary="A mask as PNG, COCO RLE or polygons",
            responses={200: {"content": {"image/png": {}, "application/json": {}}}})
def get_mask(
    session_id: str,
    context: Context,
    which: Annotated[str, Query(alias="object", max_length=16,
                                description="'current', 'all' (instance ids) or a finished object id")] = "current",
    mask_format: Annotated[MaskFormat, Query(alias="format")] = "png",
) -> Response:
    selected = parse_object(which)

    def action(session: AnnotationSession) -> Response:
        if selected == "current":
            return mask_response(session.current_mask(), mask_format)
        if selected == "all":
            return label_map_response(session.label_map(), mask_format)
        return mask_response(session.object_mask(int(selected)), mask_format, object_id=int(selected))

    return context.use(session_id, action)
