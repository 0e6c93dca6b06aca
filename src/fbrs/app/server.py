"""The HTTP API and the web UI of the annotation app (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

Coordinates in every request and response are (x, y) = (column, row) full-resolution image pixels.
Endpoints that predict are plain `def` functions: FastAPI runs them in its worker thread pool, so a
slow prediction never blocks the event loop, and each session's lock keeps its requests in order.
"""

from __future__ import annotations

import io
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.errors import (
    AnnotationConflictError,
    AnnotationFileError,
    ModeUnavailableError,
    PayloadTooLargeError,
    SessionNotFoundError,
    UnknownImageError,
)
from fbrs.app.export import encode_rle, mask_bbox, mask_to_polygons
from fbrs.app.project import AnnotationProject, AppLimits, check_pixel_limit
from fbrs.app.sessions import AnnotationSession, AppClick, SessionStore
from fbrs.errors import ConfigError, FbrsError, InvalidClickError, InvalidImageError
from fbrs.images import as_rgb_uint8

STATIC_DIR = Path(__file__).parent / "static"

ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (SessionNotFoundError, 404),
    (UnknownImageError, 404),
    (AnnotationConflictError, 409),
    (PayloadTooLargeError, 413),
    (AnnotationFileError, 500),
    (InvalidImageError, 400),
    (InvalidClickError, 400),
    (ConfigError, 400),
    (ModeUnavailableError, 400),
)


class ClickRequest(BaseModel):
    x: float = Field(description="column, full-resolution pixels, 0 <= x < width")
    y: float = Field(description="row, full-resolution pixels, 0 <= y < height")
    positive: bool = Field(True, description="true = object, false = background")


class SettingsRequest(BaseModel):
    mode: str | None = Field(None, description="predictor mode, see GET /api/info")
    zoom_in: bool | None = None
    prob_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    flip: bool | None = Field(None, description="flip test-time augmentation (learned modes; 2x the time)")


MaskFormat = Literal["png", "rle", "polygons"]


# ---------------------------------------------------------------------------------------------- helpers


def decode_image_upload(data: bytes, limits: AppLimits, what: str = "uploaded image") -> np.ndarray:
    """Bytes of an image file -> (H, W, 3) uint8 RGB, within the size limits."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    if not data:
        raise InvalidImageError(f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_pixel_limit(image.width, image.height, limits, what)
            image.load()
            if image.mode not in ("RGB", "L", "RGBA"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except UnidentifiedImageError:
        raise InvalidImageError(f"{what} is not a readable image: unknown format (use PNG, JPEG, BMP, TIFF "
                                "or WebP)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImageError(f"{what} is not a readable image: {error}") from None
    return as_rgb_uint8(array)


def decode_mask_upload(data: bytes, width: int, height: int, limits: AppLimits) -> np.ndarray:
    """A mask image (any mode; non-zero = object) -> (H, W) bool, checked against the image size."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"previous mask is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
    except UnidentifiedImageError:
        raise InvalidImageError("previous mask is not a readable image: unknown format (use PNG)") from None
    except (OSError, ValueError) as error:
        raise InvalidImageError(f"previous mask is not a readable image: {error}") from None
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2)
    if array.shape != (height, width):
        raise InvalidImageError(
            f"previous mask is {array.shape[1]}x{array.shape[0]} but the image is {width}x{height}"
        )
    return array > 0


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def resized_for_display(array: np.ndarray, max_side: int, nearest: bool) -> np.ndarray:
    """Downscale (H, W[, C]) so the longer side is at most max_side; masks use nearest neighbour."""
    from PIL import Image

    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(array).resize(size, resample))


def mask_response(mask: np.ndarray, mask_format: str, object_id: int | None = None) -> Response:
    """A (H, W) bool mask as a 0/255 PNG or as JSON with COCO RLE / polygons."""
    if mask_format == "png":
        return Response(png_bytes(mask.astype(np.uint8) * 255), media_type="image/png")
    body: dict[str, Any] = {"width": mask.shape[1], "height": mask.shape[0], "area": int(mask.sum()),
                            "bbox": mask_bbox(mask)}
    if object_id is not None:
        body["object_id"] = object_id
    if mask_format == "rle":
        body["rle"] = encode_rle(mask)
    else:
        body["polygons"] = mask_to_polygons(mask)
    return JSONResponse(body)


# ------------------------------------------------------------------------------------------------- app


def create_app(
    engine: PredictionEngine,
    project: AnnotationProject | None = None,
    limits: AppLimits | None = None,
) -> FastAPI:
    """The annotation app. `project` = an annotation folder for the web UI (None: API only)."""
    limits = limits or (project.limits if project is not None else AppLimits())

    def save_to_folder(session: AnnotationSession) -> None:
        if project is not None and session.image_name is not None:
            project.save(session.to_annotation())

    store = SessionStore(limits.max_sessions, on_evict=save_to_folder)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        # Unfinished clicks of folder images survive a restart through their click logs.
        for session in store.sessions():
            if session.image_name is not None and project is not None and session.version > 0:
                save_to_folder(session)

    app = FastAPI(
        title="fbrs annotation app",
        version="1.0",
        description="Click-based interactive segmentation (f-BRS). Coordinates are (x, y) image pixels.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.engine = engine
    app.state.project = project
    app.state.limits = limits

    for error_type, status in ERROR_STATUS:
        app.add_exception_handler(
            error_type,
            lambda _request, error, status=status: JSONResponse({"detail": str(error)}, status_code=status),
        )
    app.add_exception_handler(
        FbrsError, lambda _request, error: JSONResponse({"detail": str(error)}, status_code=400)
    )

    @app.middleware("http")
    async def reject_oversized_bodies(request: Request, call_next):
        # Checked before the body is read; multipart overhead gets 64 KiB of slack.
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes + 65536:
            return JSONResponse(
                {"detail": f"request body is {length} bytes; the upload limit is {limits.max_upload_bytes}"},
                status_code=413,
            )
        return await call_next(request)

    def session_of(session_id: str) -> AnnotationSession:
        return store.get(session_id)

    def folder() -> AnnotationProject:
        if project is None:
            raise UnknownImageError("the app was started without an images folder")
        return project

    def parse_settings(
        mode: str | None, zoom_in: bool | None, prob_threshold: float | None, flip: bool | None
    ) -> PredictorSettings:
        values = {key: value for key, value in
                  {"mode": mode, "zoom_in": zoom_in, "prob_threshold": prob_threshold, "flip": flip}.items()
                  if value is not None}
        try:
            settings = PredictorSettings.from_dict(values, base=engine.default_settings())
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
        engine.check_mode(settings.mode)
        return settings

    # ----------------------------------------------------------------------------------------- UI

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info", summary="Modes, defaults, limits, model and folder")
    def info() -> dict[str, Any]:
        return {
            "modes": engine.modes(),
            "default_settings": engine.default_settings().to_dict(),
            "model": engine.model_name,
            "backend": engine.backend,
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_image_pixels": limits.max_image_pixels,
                "max_sessions": limits.max_sessions,
                "display_max_side": limits.display_max_side,
            },
            "folder": None if project is None else {
                "images_dir": str(project.images_dir), "out_dir": str(project.out_dir),
            },
        }

    @app.get("/api/images", summary="Images of the annotation folder with their done state")
    def list_images() -> list[dict[str, Any]]:
        return folder().image_list()

    @app.post("/api/images/{image_name}/session", summary="Open (or resume) the session of a folder image")
    def open_image(image_name: str) -> dict[str, Any]:
        annotations = folder()
        session = store.find_image(image_name)
        if session is None:
            image = annotations.load_image(image_name)
            session = AnnotationSession(
                image, engine, image_name=image_name, saved=annotations.saved_annotation(image_name)
            )
            store.add(session)
        return session.state()

    # ----------------------------------------------------------------------------------- sessions

    @app.post("/api/sessions", status_code=201, summary="Upload an image and start a session")
    def create_session(
        image: Annotated[UploadFile, File(description="PNG / JPEG / BMP / TIFF / WebP")],
        mode: Annotated[str | None, Form()] = None,
        zoom_in: Annotated[bool | None, Form()] = None,
        prob_threshold: Annotated[float | None, Form()] = None,
        flip: Annotated[bool | None, Form()] = None,
    ) -> dict[str, Any]:
        settings = parse_settings(mode, zoom_in, prob_threshold, flip)
        array = decode_image_upload(image.file.read(limits.max_upload_bytes + 1), limits)
        return store.add(AnnotationSession(array, engine, settings=settings)).state()

    @app.get("/api/sessions/{session_id}", summary="Session state: clicks, objects, settings, latency")
    def get_session(session_id: str) -> dict[str, Any]:
        return session_of(session_id).state()

    @app.delete("/api/sessions/{session_id}", status_code=204, summary="Close a session")
    def delete_session(session_id: str) -> Response:
        session = store.remove(session_id)
        if session.version > 0:
            save_to_folder(session)
        return Response(status_code=204)

    @app.post("/api/sessions/{session_id}/clicks", summary="Add a click to the current object")
    def add_click(session_id: str, click: ClickRequest) -> dict[str, Any]:
        session = session_of(session_id)
        session.add_click(click.x, click.y, click.positive)
        return session.state()

    @app.post("/api/sessions/{session_id}/undo", summary="Undo the current object's last click")
    def undo(session_id: str) -> dict[str, Any]:
        session = session_of(session_id)
        session.undo()
        return session.state()

    @app.post("/api/sessions/{session_id}/redo", summary="Redo the last undone click")
    def redo(session_id: str) -> dict[str, Any]:
        session = session_of(session_id)
        session.redo()
        return session.state()

    @app.post("/api/sessions/{session_id}/reset", summary="Drop the current object's clicks")
    def reset(session_id: str) -> dict[str, Any]:
        session = session_of(session_id)
        session.reset_object()
        return session.state()

    @app.post("/api/sessions/{session_id}/finish", summary="Finish the current object, start the next")
    def finish(session_id: str) -> dict[str, Any]:
        session = session_of(session_id)
        object_id = session.finish_object()
        save_to_folder(session)
        return {**session.state(), "finished_object_id": object_id}

    @app.delete("/api/sessions/{session_id}/objects/{object_id}", summary="Delete a finished object")
    def delete_object(session_id: str, object_id: int) -> dict[str, Any]:
        session = session_of(session_id)
        session.delete_object(object_id)
        save_to_folder(session)
        return session.state()

    @app.put("/api/sessions/{session_id}/settings", summary="Change mode / zoom-in / threshold / flip")
    def update_settings(session_id: str, settings: SettingsRequest) -> dict[str, Any]:
        session = session_of(session_id)
        session.update_settings(settings.model_dump(exclude_none=True))
        return session.state()

    @app.post("/api/sessions/{session_id}/save", summary="Save a folder image's PNG, click log and COCO")
    def save(session_id: str) -> dict[str, Any]:
        session = session_of(session_id)
        if project is None or session.image_name is None:
            raise AnnotationConflictError(
                "only sessions of folder images are saved to disk; fetch uploaded sessions' masks with "
                "GET /api/sessions/{id}/mask"
            )
        session.mark_done(True)
        return {**session.state(), "files": project.save(session.to_annotation())}

    @app.get("/api/sessions/{session_id}/mask", summary="A mask as PNG, COCO RLE or polygons",
             responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    def get_mask(
        session_id: str,
        which: Annotated[str, Query(alias="object",
                                    description="'current', 'all' (instance ids) or a finished object id")] = "current",
        mask_format: Annotated[MaskFormat, Query(alias="format")] = "png",
    ) -> Response:
        session = session_of(session_id)
        with session.lock:
            if which == "current":
                return mask_response(session.current_mask(), mask_format)
            if which == "all":
                labels = session.label_map()
                if mask_format == "png":
                    return Response(png_bytes(labels), media_type="image/png")
                return JSONResponse({
                    "width": session.width, "height": session.height,
                    "objects": [
                        {"object_id": object_id,
                         **({"rle": encode_rle(labels == object_id)} if mask_format == "rle"
                            else {"polygons": mask_to_polygons(labels == object_id)})}
                        for object_id in sorted(int(value) for value in np.unique(labels) if value)
                    ],
                })
            if not which.isdigit():
                raise ConfigError(f"object must be 'current', 'all' or an object id, got {which!r}")
            return mask_response(session.object_mask(int(which)), mask_format, object_id=int(which))

    @app.get("/api/sessions/{session_id}/image", summary="The session's image, downscaled for display")
    def get_image(session_id: str, max_side: Annotated[int, Query(ge=16, le=8192)] = limits.display_max_side
                  ) -> Response:
        from PIL import Image

        session = session_of(session_id)
        buffer = io.BytesIO()
        Image.fromarray(resized_for_display(session.image, max_side, nearest=False)).save(
            buffer, format="JPEG", quality=90
        )
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sessions/{session_id}/overlay.png", summary="Objects in their colours (RGBA) for display")
    def get_overlay(session_id: str, max_side: Annotated[int, Query(ge=16, le=8192)] = limits.display_max_side
                    ) -> Response:
        overlay = session_of(session_id).overlay_rgba()
        return Response(png_bytes(resized_for_display(overlay, max_side, nearest=True)), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    # ---------------------------------------------------------------------------------- stateless

    @app.post("/api/predict", summary="Stateless: image + clicks -> mask (for annotation platforms)")
    def predict(
        image: Annotated[UploadFile, File(description="PNG / JPEG / BMP / TIFF / WebP")],
        clicks: Annotated[str, Form(description='JSON list: [{"x": 10, "y": 20, "positive": true}, ...]')],
        previous_mask: Annotated[UploadFile | None, File(
            description="optional mask (non-zero = object) the clicks correct; "
                        "the result keeps it outside the area the clicks decide")] = None,
        mode: Annotated[str | None, Form()] = None,
        zoom_in: Annotated[bool | None, Form()] = None,
        prob_threshold: Annotated[float | None, Form()] = None,
        flip: Annotated[bool | None, Form()] = None,
        mask_format: Annotated[MaskFormat, Form(alias="format")] = "png",
    ) -> Response:
        settings = parse_settings(mode, zoom_in, prob_threshold, flip)
        try:
            click_values = json.loads(clicks)
        except ValueError as error:
            raise InvalidClickError(f"clicks must be a JSON list of {{x, y, positive}}: {error}") from None
        if not isinstance(click_values, list) or not click_values:
            raise InvalidClickError("clicks must be a non-empty JSON list of {x, y, positive}")
        parsed = [AppClick.from_dict(values) if isinstance(values, dict) else AppClick.from_dict({})
                  for values in click_values]
        array = decode_image_upload(image.file.read(limits.max_upload_bytes + 1), limits)
        previous = None
        if previous_mask is not None:
            previous = decode_mask_upload(
                previous_mask.file.read(limits.max_upload_bytes + 1), array.shape[1], array.shape[0], limits
            )
        session = AnnotationSession(array, engine, settings=settings)
        for click in parsed:
            session.add_click(click.x, click.y, click.positive)
        mask = session.current_mask()
        if previous is not None:
            mask = merge_with_previous(mask, previous, parsed)
        return mask_response(mask, mask_format)

    return app


def merge_with_previous(mask: np.ndarray, previous: np.ndarray, clicks: list[AppClick]) -> np.ndarray:
    """Combine a new prediction with the mask it corrects.

    f-BRS models take only the image and the clicks, so a previous mask cannot steer the network. What an
    annotation platform means by sending one is "keep my mask, fix it where I clicked": the new
    prediction decides inside the bounding box of its clicks and its own mask (grown by 10% of its size);
    outside it the previous mask stays as it was.
    """
    rows = [click.y for click in clicks] + list(np.flatnonzero(mask.any(axis=1)))
    cols = [click.x for click in clicks] + list(np.flatnonzero(mask.any(axis=0)))
    top, bottom, left, right = min(rows), max(rows), min(cols), max(cols)
    margin_y = 0.1 * (bottom - top + 1)
    margin_x = 0.1 * (right - left + 1)
    top, bottom = int(max(0, top - margin_y)), int(min(mask.shape[0] - 1, bottom + margin_y))
    left, right = int(max(0, left - margin_x)), int(min(mask.shape[1] - 1, right + margin_x))
    merged = previous.copy()
    merged[top:bottom + 1, left:right + 1] = mask[top:bottom + 1, left:right + 1]
    return merged
