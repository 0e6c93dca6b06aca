"""The HTTP API and the web UI of the annotation app (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

Coordinates in every request and response are (x, y) = (column, row) full-resolution image pixels.
Endpoints that predict are plain `def` functions: FastAPI runs them in its worker thread pool, so a
slow prediction never blocks the event loop, and each session's lock keeps its requests in order.

What is refused before a route runs (foreign Host, cross-site writes, oversized bodies) is in
`fbrs.app.guards`; what a route checks before it works (types, finite numbers, click counts, pixels
from the header) in `fbrs.app.validation` and `fbrs.images`; how sessions survive eviction in
`fbrs.app.store`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

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
from fbrs.app.guards import LOOPBACK_HOSTS, BodySizeLimit, HostGuard
from fbrs.app.labels import LabelSet
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.sessions import AnnotationSession, AppClick
from fbrs.app.store import SessionStore, SpillFolder, Tombstone
from fbrs.app.validation import (
    MAX_CLICKS_PER_OBJECT,
    MAX_OBJECT_ID,
    ClickRequest,
    LabelRequest,
    SettingsRequest,
    check_clicks_inside,
    parse_clicks,
    parse_object,
    validation_error_body,
)
from fbrs.errors import ConfigError, FbrsError, InvalidClickError, InvalidImageError
from fbrs.images import ImageTooLargeError, image_size, load_image, load_mask

__all__ = ["ClickRequest", "SettingsRequest", "create_app", "decode_image_upload", "decode_mask_upload"]

T = TypeVar("T")
MULTIPART_SLACK_BYTES = 64 * 1024
UPLOAD_ROUTES = frozenset({("POST", "/api/sessions"), ("POST", "/api/predict")})

STATIC_DIR = Path(__file__).parent / "static"

ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (SessionNotFoundError, 404),
    (UnknownImageError, 404),
    (AnnotationConflictError, 409),
    (PayloadTooLargeError, 413),
    (ImageTooLargeError, 413),
    (AnnotationFileError, 500),
    (InvalidImageError, 400),
    (InvalidClickError, 400),
    (ConfigError, 400),
    (ModeUnavailableError, 400),
)


MaskFormat = Literal["png", "rle", "polygons"]


# ---------------------------------------------------------------------------------------------- helpers


def decode_image_upload(data: bytes, limits: AppLimits, what: str = "uploaded image") -> np.ndarray:
    """Bytes of an image file -> (H, W, 3) uint8 RGB, within the size limits (pixels from the header)."""
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    return load_image(data, max_pixels=limits.max_image_pixels, what=what)


def decode_mask_upload(data: bytes, width: int, height: int, limits: AppLimits) -> np.ndarray:
    """A mask image (any mode; non-zero = object) -> (H, W) bool, its header checked against the image size."""
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"previous mask is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    return load_mask(data, width=width, height=height, max_pixels=limits.max_image_pixels, what="previous mask")


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
    allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
    allowed_origins: Iterable[str] = (),
    labels: LabelSet | None = None,
) -> FastAPI:
    """The annotation app. `project` = an annotation folder for the web UI (None: API only).

    allowed_hosts: the names clients may reach the server under (the Host header; "*" = any);
    allowed_origins: other web origins whose pages may change state (see `fbrs.app.guards.HostGuard`);
    labels: the objects' categories (default: the project's, else the one label "object").
    """
    limits = limits or (project.limits if project is not None else AppLimits())
    if labels is None:
        labels = project.labels if project is not None else LabelSet()
    spill = SpillFolder()

    def save_to_folder(session: AnnotationSession) -> None:
        if project is not None and session.image_name is not None:
            project.save(session.to_annotation())

    def persist(session: AnnotationSession) -> Tombstone | None:
        if project is not None and session.image_name is not None:
            save_to_folder(session)
            return Tombstone(session.session_id, session.version, image_name=session.image_name)
        if session.source is None:
            return None
        spill.write(session.session_id, session.source, session.to_annotation())
        return Tombstone(session.session_id, session.version)

    def restore(tombstone: Tombstone) -> AnnotationSession:
        if tombstone.image_name is not None:
            return open_folder_session(tombstone.image_name, tombstone.session_id)
        data, saved = spill.read(tombstone.session_id)
        session = AnnotationSession(decode_image_upload(data, limits), engine, saved=saved,
                                    session_id=tombstone.session_id, source=data, labels=labels)
        spill.discard(tombstone.session_id)
        return session

    def open_folder_session(image_name: str, session_id: str | None = None) -> AnnotationSession:
        annotations = folder()
        return AnnotationSession(annotations.load_image(image_name), engine, image_name=image_name,
                                 saved=annotations.saved_annotation(image_name), session_id=session_id,
                                 labels=labels)

    store = SessionStore(
        limits.max_sessions, limits.max_session_bytes, persist=persist, restore=restore,
        forget=lambda tombstone: spill.discard(tombstone.session_id),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        # Unfinished clicks of folder images survive a restart through their click logs.
        for session in store.sessions():
            if session.image_name is not None and project is not None and session.version > 0:
                save_to_folder(session)
        spill.close()

    app = FastAPI(
        title="fbrs annotation app",
        version="1.0",
        description="Click-based interactive segmentation (f-BRS). Coordinates are (x, y) image pixels.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN; /docs below ships with the app
        redoc_url=None,
    )
    app.state.store = store
    app.state.engine = engine
    app.state.project = project
    app.state.limits = limits
    app.state.labels = labels

    for error_type, status in ERROR_STATUS:
        app.add_exception_handler(
            error_type,
            lambda _request, error, status=status: JSONResponse({"detail": str(error)}, status_code=status),
        )
    app.add_exception_handler(
        FbrsError, lambda _request, error: JSONResponse({"detail": str(error)}, status_code=400)
    )
    app.add_exception_handler(
        RequestValidationError,
        lambda _request, error: JSONResponse(validation_error_body(list(error.errors())), status_code=422),
    )

    def body_limit(scope: dict[str, Any]) -> int:
        if (scope["method"], scope["path"]) in UPLOAD_ROUTES:
            return limits.max_upload_bytes + MULTIPART_SLACK_BYTES
        return limits.max_json_bytes

    # Added last = runs first: a foreign Host is refused before its body is read.
    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    app.add_middleware(HostGuard, allowed_hosts=tuple(allowed_hosts), allowed_origins=tuple(allowed_origins))

    def use(session_id: str, action: Callable[[AnnotationSession], T]) -> T:
        """Run `action` on the live session (rebuilt if it was evicted), pinned and under its lock; the
        bounds are enforced again when it ends (the session may have grown)."""
        for _ in range(3):
            with store.checkout(session_id) as session, session.lock:  # pinned: not evicted while in use
                if not session.closed:  # else its eviction was finishing: the next checkout rebuilds it
                    return action(session)
        raise SessionNotFoundError(f"session {session_id[:64]!r} was closed meanwhile")

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

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info", summary="Modes, defaults, limits, model and folder")
    def info() -> dict[str, Any]:
        return {
            "modes": engine.modes(),
            "default_settings": engine.default_settings().to_dict(),
            "labels": labels.to_list(),
            "model": engine.model_name,
            "backend": engine.backend,
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_image_pixels": limits.max_image_pixels,
                "max_sessions": limits.max_sessions,
                "max_session_bytes": limits.max_session_bytes,
                "max_clicks_per_object": MAX_CLICKS_PER_OBJECT,
                "display_max_side": limits.display_max_side,
            },
            "sessions": {"live": len(store), "memory_bytes": store.memory_bytes(), "evictions": store.evictions,
                         "restores": store.restores},
            "folder": None if project is None else {
                "images_dir": str(project.images_dir), "out_dir": str(project.out_dir),
                "skipped": project.skipped_images(),
            },
        }

    @app.get("/api/images", summary="Images of the annotation folder with their done state")
    def list_images() -> list[dict[str, Any]]:
        return folder().image_list()

    @app.post("/api/images/{image_name}/session", summary="Open (or resume) the session of a folder image")
    def open_image(image_name: str) -> dict[str, Any]:
        annotations = folder()
        annotations.image_path(image_name)  # 404 for a name outside the folder, before any work
        for _ in range(3):
            with store.checkout_image(image_name, create=lambda: open_folder_session(image_name)) as session:
                with session.lock:
                    if not session.closed:
                        return session.state()
        raise SessionNotFoundError(f"the session of {image_name!r} was closed meanwhile; open it again")

    # ----------------------------------------------------------------------------------- sessions

    @app.post("/api/sessions", status_code=201, summary="Upload an image and start a session")
    def create_session(
        image: Annotated[UploadFile, File(description="PNG / JPEG / BMP / TIFF / WebP")],
        mode: Annotated[str | None, Form(max_length=64)] = None,
        zoom_in: Annotated[bool | None, Form()] = None,
        prob_threshold: Annotated[float | None, Form(allow_inf_nan=False)] = None,
        flip: Annotated[bool | None, Form()] = None,
    ) -> dict[str, Any]:
        settings = parse_settings(mode, zoom_in, prob_threshold, flip)
        data = image.file.read(limits.max_upload_bytes + 1)
        array = decode_image_upload(data, limits)
        return store.add(AnnotationSession(array, engine, settings=settings, source=data, labels=labels)).state()

    @app.get("/api/sessions/{session_id}", summary="Session state: clicks, objects, settings, latency")
    def get_session(session_id: str) -> dict[str, Any]:
        return use(session_id, lambda session: session.state())

    @app.delete("/api/sessions/{session_id}", status_code=204, summary="Close a session")
    def delete_session(session_id: str) -> Response:
        session = store.remove(session_id)
        if session is not None:
            with session.lock:
                session.closed = True
                if session.version > 0:
                    save_to_folder(session)
        return Response(status_code=204)

    @app.post("/api/sessions/{session_id}/clicks", summary="Add a click to the current object")
    def add_click(session_id: str, click: ClickRequest) -> dict[str, Any]:
        def action(session: AnnotationSession) -> dict[str, Any]:
            session.add_click(click.x, click.y, click.positive, label=click.label)
            return session.state()

        if click.label is not None:
            labels.require(click.label)  # 400 before any work
        return use(session_id, action)

    @app.put("/api/sessions/{session_id}/label", summary="Label the current object (and the next ones)")
    def set_label(session_id: str, request: LabelRequest) -> dict[str, Any]:
        labels.require(request.label)
        return use(session_id, lambda session: (session.set_label(request.label), session.state())[1])

    @app.put("/api/sessions/{session_id}/objects/{object_id}/label", summary="Change a finished object's label")
    def set_object_label(
        session_id: str, object_id: Annotated[int, PathParameter(ge=1, le=MAX_OBJECT_ID)], request: LabelRequest
    ) -> dict[str, Any]:
        labels.require(request.label)

        def action(session: AnnotationSession) -> dict[str, Any]:
            session.set_object_label(object_id, request.label)
            save_to_folder(session)
            return session.state()

        return use(session_id, action)

    @app.post("/api/sessions/{session_id}/undo", summary="Undo the current object's last click")
    def undo(session_id: str) -> dict[str, Any]:
        return use(session_id, lambda session: (session.undo(), session.state())[1])

    @app.post("/api/sessions/{session_id}/redo", summary="Redo the last undone click")
    def redo(session_id: str) -> dict[str, Any]:
        return use(session_id, lambda session: (session.redo(), session.state())[1])

    @app.post("/api/sessions/{session_id}/reset", summary="Drop the current object's clicks")
    def reset(session_id: str) -> dict[str, Any]:
        return use(session_id, lambda session: (session.reset_object(), session.state())[1])

    @app.post("/api/sessions/{session_id}/finish", summary="Finish the current object, start the next")
    def finish(session_id: str) -> dict[str, Any]:
        def action(session: AnnotationSession) -> dict[str, Any]:
            object_id = session.finish_object()
            save_to_folder(session)
            return {**session.state(), "finished_object_id": object_id}

        return use(session_id, action)

    @app.delete("/api/sessions/{session_id}/objects/{object_id}", summary="Delete a finished object")
    def delete_object(
        session_id: str, object_id: Annotated[int, PathParameter(ge=1, le=MAX_OBJECT_ID)]
    ) -> dict[str, Any]:
        def action(session: AnnotationSession) -> dict[str, Any]:
            session.delete_object(object_id)
            save_to_folder(session)
            return session.state()

        return use(session_id, action)

    @app.put("/api/sessions/{session_id}/settings", summary="Change mode / zoom-in / threshold / flip")
    def update_settings(session_id: str, settings: SettingsRequest) -> dict[str, Any]:
        values = settings.model_dump(exclude_none=True)
        return use(session_id, lambda session: (session.update_settings(values), session.state())[1])

    @app.post("/api/sessions/{session_id}/save", summary="Save a folder image's PNG, click log and COCO")
    def save(session_id: str) -> dict[str, Any]:
        def action(session: AnnotationSession) -> dict[str, Any]:
            if project is None or session.image_name is None:
                raise AnnotationConflictError(
                    "only sessions of folder images are saved to disk; fetch uploaded sessions' masks with "
                    "GET /api/sessions/{id}/mask"
                )
            session.mark_done(True)
            return {**session.state(), "files": project.save(session.to_annotation())}

        return use(session_id, action)

    @app.get("/api/sessions/{session_id}/mask", summary="A mask as PNG, COCO RLE or polygons",
             responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    def get_mask(
        session_id: str,
        which: Annotated[str, Query(alias="object", max_length=16,
                                    description="'current', 'all' (instance ids) or a finished object id")] = "current",
        mask_format: Annotated[MaskFormat, Query(alias="format")] = "png",
    ) -> Response:
        selected = parse_object(which)

        def action(session: AnnotationSession) -> Response:
            if selected == "current":
                return mask_response(session.current_mask(), mask_format)
            if selected == "all":
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
            return mask_response(session.object_mask(int(selected)), mask_format, object_id=int(selected))

        return use(session_id, action)

    @app.get("/api/sessions/{session_id}/image", summary="The session's image, downscaled for display")
    def get_image(session_id: str, max_side: Annotated[int, Query(ge=16, le=8192)] = limits.display_max_side
                  ) -> Response:
        from PIL import Image

        image = use(session_id, lambda session: session.image)
        buffer = io.BytesIO()
        Image.fromarray(resized_for_display(image, max_side, nearest=False)).save(buffer, format="JPEG", quality=90)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sessions/{session_id}/overlay.png", summary="Objects in their colours (RGBA) for display")
    def get_overlay(session_id: str, max_side: Annotated[int, Query(ge=16, le=8192)] = limits.display_max_side
                    ) -> Response:
        overlay = use(session_id, lambda session: session.overlay_rgba())
        return Response(png_bytes(resized_for_display(overlay, max_side, nearest=True)), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    # ---------------------------------------------------------------------------------- stateless

    @app.post("/api/predict", summary="Stateless: image + clicks -> mask (for annotation platforms)")
    def predict(
        image: Annotated[UploadFile, File(description="PNG / JPEG / BMP / TIFF / WebP")],
        clicks: Annotated[str, Form(description='JSON list: [{"x": 10, "y": 20, "positive": true}, ...]; '
                                                f"at most {MAX_CLICKS_PER_OBJECT}")],
        previous_mask: Annotated[UploadFile | None, File(
            description="optional mask (non-zero = object) the clicks correct; "
                        "the result keeps it outside the area the clicks decide")] = None,
        mode: Annotated[str | None, Form(max_length=64)] = None,
        zoom_in: Annotated[bool | None, Form()] = None,
        prob_threshold: Annotated[float | None, Form(allow_inf_nan=False)] = None,
        flip: Annotated[bool | None, Form()] = None,
        mask_format: Annotated[MaskFormat, Form(alias="format")] = "png",
    ) -> Response:
        # Everything that costs nothing is checked before anything that costs something: settings and
        # clicks, then the image's and the mask's headers, then decoding, then predicting.
        settings = parse_settings(mode, zoom_in, prob_threshold, flip)
        parsed = [AppClick(x, y, positive) for x, y, positive in parse_clicks(clicks)]
        data = image.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise PayloadTooLargeError(f"uploaded image is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
        width, height = image_size(data, what="uploaded image")
        if width * height > limits.max_image_pixels:
            raise ImageTooLargeError(f"uploaded image is {width}x{height} = {width * height} pixels; "
                                     f"the limit is {limits.max_image_pixels} pixels")
        check_clicks_inside([(click.x, click.y, click.positive) for click in parsed], width, height)
        previous = None
        if previous_mask is not None:
            previous = decode_mask_upload(previous_mask.file.read(limits.max_upload_bytes + 1), width, height, limits)
        array = decode_image_upload(data, limits)
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
