"""A session's life: upload an image to start one, read its state, change its settings, close it; and its
image and overlay downscaled for display."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from fbrs.app.context import Context
from fbrs.app.engine import PredictorSettings
from fbrs.app.payloads import decode_image_upload, jpeg_bytes, png_bytes, resized_for_display
from fbrs.app.sessions import AnnotationSession
from fbrs.app.validation import SettingsRequest

router = APIRouter()

# None = the app's `AppLimits.display_max_side` (the default depends on the app, the route does not).
DisplaySide = Annotated[int | None, Query(ge=16, le=8192, description="longest side (default: display_max_side)")]


@router.post("/api/sessions", status_code=201, summary="Upload an image and start a session")
def create_session(
    context: Context,
    image: Annotated[UploadFile, File(description="PNG / JPEG / BMP / TIFF / WebP")],
    mode: Annotated[str | None, Form(max_length=64)] = None,
    zoom_in: Annotated[bool | None, Form()] = None,
    prob_threshold: Annotated[float | None, Form(allow_inf_nan=False)] = None,
    flip: Annotated[bool | None, Form()] = None,
) -> dict[str, Any]:
    settings = context.parse_settings(mode, zoom_in, prob_threshold, flip)
    data = image.file.read(context.limits.max_upload_bytes + 1)
    array = decode_image_upload(data, context.limits)
    session = AnnotationSession(array, context.engine, settings=settings, source=data, labels=context.labels)
    return context.store.add(session).state()


@router.get("/api/sessions/{session_id}", summary="Session state: clicks, objects, settings, latency")
def get_session(session_id: str, context: Context) -> dict[str, Any]:
    return context.use(session_id, lambda session: session.state())


@router.post("/api/sessions/{session_id}/prepare", summary="Get the image ready for clicks (the SAM encoder)")
def prepare_session(session_id: str, context: Context) -> dict[str, Any]:
    """Blocks until the predictor has the image (for the SAM family: the image encoder, seconds; cached or
    prefetched images return at once); then the next folder image is encoded in the background."""
    def prepare(session: AnnotationSession) -> tuple[dict[str, Any], PredictorSettings]:
        session.prepare()
        return session.state(), session.settings

    state, settings = context.use(session_id, prepare)
    if state["image_name"] is not None:
        context.prefetch_next(state["image_name"], settings)
    return state


@router.delete("/api/sessions/{session_id}", status_code=204, summary="Close a session")
def delete_session(session_id: str, context: Context) -> Response:
    session = context.store.remove(session_id)
    if session is not None:
        with session.lock:
            session.closed = True
            if session.version > 0:
                context.save_to_folder(session)
    return Response(status_code=204)


@router.put("/api/sessions/{session_id}/settings", summary="Change mode / zoom-in / threshold / flip")
def update_settings(session_id: str, settings: SettingsRequest, context: Context) -> dict[str, Any]:
    values = settings.model_dump(exclude_none=True)
    return context.use(session_id, lambda session: (session.update_settings(values), session.state())[1])


@router.get("/api/sessions/{session_id}/image", summary="The session's image, downscaled for display")
def get_image(session_id: str, context: Context, max_side: DisplaySide = None) -> Response:
    image = context.use(session_id, lambda session: session.image)
    side = context.limits.display_max_side if max_side is None else max_side
    return Response(jpeg_bytes(resized_for_display(image, side, nearest=False)), media_type="image/jpeg",
                    headers={"Cache-Control": "max-age=3600"})


@router.get("/api/sessions/{session_id}/overlay.png", summary="Objects in their colours (RGBA) for display")
def get_overlay(session_id: str, context: Context, max_side: DisplaySide = None) -> Response:
    overlay = context.use(session_id, lambda session: session.overlay_rgba())
    side = context.limits.display_max_side if max_side is None else max_side
    return Response(png_bytes(resized_for_display(overlay, side, nearest=True)), media_type="image/png",
                    headers={"Cache-Control": "no-store"})
