"""The HTTP API and the web UI of the annotation app (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

`create_app` is wiring only: the shared state (`fbrs.app.context.AppContext`, in `app.state.context`),
the error -> status mapping, the guards, the routers of `fbrs.app.routes` and the static files.

Coordinates in every request and response are (x, y) = (column, row) full-resolution image pixels.
Endpoints that predict are plain `def` functions: FastAPI runs them in its worker thread pool, so a
slow prediction never blocks the event loop, and each session's lock keeps its requests in order.

What is refused before a route runs (foreign Host, cross-site writes, oversized bodies) is in
`fbrs.app.guards`; what a route checks before it works (types, finite numbers, click counts, pixels
from the header) in `fbrs.app.validation` and `fbrs.images`; how sessions survive eviction in
`fbrs.app.store`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from fbrs.app.context import AppContext
from fbrs.app.engine import PredictionEngine
from fbrs.app.errors import (
    AnnotationConflictError,
    AnnotationFileError,
    ModeUnavailableError,
    PayloadTooLargeError,
    SessionNotFoundError,
    UnknownImageError,
)
from fbrs.app.guards import LOOPBACK_HOSTS, BodySizeLimit, HostGuard
from fbrs.app.labels import LabelSet
from fbrs.app.payloads import decode_image_upload, decode_mask_upload
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.routes import ROUTERS
from fbrs.app.routes.pages import STATIC_DIR
from fbrs.app.validation import ClickRequest, SettingsRequest, validation_error_body
from fbrs.errors import ConfigError, FbrsError, InvalidClickError, InvalidImageError
from fbrs.images import ImageTooLargeError

__all__ = ["ClickRequest", "SettingsRequest", "create_app", "decode_image_upload", "decode_mask_upload"]

MULTIPART_SLACK_BYTES = 64 * 1024
UPLOAD_ROUTES = frozenset({("POST", "/api/sessions"), ("POST", "/api/predict")})

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
    context = AppContext(engine, project, limits, labels)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        context.close()

    app = FastAPI(
        title="fbrs annotation app",
        version="1.0",
        description="Click-based interactive segmentation (f-BRS). Coordinates are (x, y) image pixels.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN; /docs ships with the app
        redoc_url=None,
    )
    app.state.context = context
    # The context's parts under their own names too, for callers that read them (fbrs.app.cli, tests);
    # the routes use the context.
    for name in ("store", "engine", "project", "limits", "labels"):
        setattr(app.state, name, getattr(context, name))

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

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
