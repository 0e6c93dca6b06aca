"""CVAT's interactor contract, version 2: a nuclio handler and the same contract over plain HTTP.

Request (what CVAT's lambda manager sends for a `type: interactor` function):
    {"image": base64 of the frame (PNG/JPEG bytes), "pos_points": [[x, y], ...], "neg_points": [[x, y], ...],
     "obj_bbox": [[x1, y1], [x2, y2]] or null, "threshold": optional mask threshold in (0, 1)}
Response:
    {"mask": H x W list of rows of 0/1, "points": [[x, y], ...]}   the largest outer contour of the mask

Points are pixels, (x, y) = (column, row); fbrs works in (y, x), converted here once. CVAT sends positive
and negative points as two lists, so the order in which they were clicked is lost: the segmenter continues
the click order of its last answer on the frame (one new click costs one click), new ones after it.
Everything is checked before any work (base64, the image's size from its header, the point lists, finite
numbers); a bad request is a 400 (413 for an image too large) with a message saying what to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the routes' annotations here

from fbrs.errors import FbrsError, InvalidClickError, InvalidImageError
from fbrs.images import ImageTooLargeError, image_size, load_image
from fbrs.inference.clicks import Click
from fbrs.serve.segmenter import Box, WarmSegmenter

#: nuclio's maxRequestBodySize in function.yaml is 32 MiB; the base64 of a frame is 4/3 of its bytes.
MAX_IMAGE_BASE64_CHARS = 32 * 1024 * 1024
MAX_PIXELS = 64_000_000
MAX_POINTS = 100


class CvatRequestError(FbrsError, ValueError):
    """A request that does not follow the interactor contract."""


@dataclass(frozen=True)
class InteractorRequest:
    image_bytes: bytes
    height: int
    width: int
    clicks: tuple[Click, ...]  # positives first, then negatives, (y, x) pixels
    box: Box | None
    threshold: float | None


def parse_request(body: Any, max_pixels: int = MAX_PIXELS) -> InteractorRequest:
    """Validate a request body (a dict, or JSON bytes/str) without decoding the image's pixels."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CvatRequestError(f"the request body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise CvatRequestError("the request body must be a JSON object with image, pos_points and neg_points")
    encoded = body.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise CvatRequestError('"image" must be the base64 of the frame (a PNG or JPEG file)')
    if len(encoded) > MAX_IMAGE_BASE64_CHARS:
        raise ImageTooLargeError(f'"image" is {len(encoded)} base64 characters; the limit is {MAX_IMAGE_BASE64_CHARS}')
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        image_bytes = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CvatRequestError('"image" is not valid base64') from None
    width, height = image_size(image_bytes, what='"image"')
    if width * height > max_pixels:
        raise ImageTooLargeError(f'"image" is {width}x{height} pixels; the limit is {max_pixels} pixels')
    positives = _points(body, "pos_points", width, height, required=True)
    negatives = _points(body, "neg_points", width, height, required=False)
    if not positives:
        raise CvatRequestError('"pos_points" needs at least one point (min_pos_points is 1)')
    if len(positives) + len(negatives) > MAX_POINTS:
        raise CvatRequestError(f"{len(positives) + len(negatives)} points; at most {MAX_POINTS} per object")
    clicks = tuple(Click(y, x, True) for x, y in positives) + tuple(Click(y, x, False) for x, y in negatives)
    return InteractorRequest(image_bytes, height, width, clicks, _box(body.get("obj_bbox"), width, height),
                             _threshold(body.get("threshold")))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CvatRequestError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _points(body: dict[str, Any], key: str, width: int, height: int, required: bool) -> list[tuple[float, float]]:
    points = body.get(key)
    if points is None and not required:
        return []
    if not isinstance(points, list):
        raise CvatRequestError(f'"{key}" must be a list of [x, y] pixel points')
    parsed = []
    for index, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise CvatRequestError(f'"{key}"[{index}] must be an [x, y] pair, got {point!r}')
        x, y = (_number(value, f'"{key}"[{index}]') for value in point)
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidClickError(f'"{key}"[{index}] = [{x:g}, {y:g}] is outside the {width}x{height} image')
        parsed.append((x, y))
    return parsed


def _box(value: Any, width: int, height: int) -> Box | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4:  # [x1, y1, x2, y2] flat, as some CVAT versions
        value = [value[:2], value[2:]]
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(corner, (list, tuple)) and len(corner) == 2 for corner in value)):
        raise CvatRequestError('"obj_bbox" must be [[x1, y1], [x2, y2]] or null')
    (x1, y1), (x2, y2) = ((_number(v, '"obj_bbox"') for v in corner) for corner in value)
    left, right, top, bottom = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    if right < 0 or bottom < 0 or left >= width or top >= height:
        raise InvalidClickError(f'"obj_bbox" {value!r} does not overlap the {width}x{height} image')
    return (max(0, math.floor(top)), min(height - 1, math.ceil(bottom)),
            max(0, math.floor(left)), min(width - 1, math.ceil(right)))


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    threshold = _number(value, '"threshold"')
    if not 0 < threshold < 1:
        raise CvatRequestError(f'"threshold" must lie strictly between 0 and 1, got {threshold:g}')
    return threshold


def largest_outer_contour(mask: np.ndarray) -> list[list[float]]:
    """[[x, y], ...] around the largest connected region of the (H, W) bool mask ([] for an empty mask).

    The contour runs through pixel edges' midpoints (scikit-image's marching squares at level 0.5), simplified
    to within half a pixel; the largest-area contour of a padded mask is always an outer one."""
    from skimage.measure import approximate_polygon, find_contours

    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = find_contours(padded, 0.5)

    def area(contour: np.ndarray) -> float:
        rows, cols = contour[:, 0], contour[:, 1]
        return abs(float(np.dot(cols, np.roll(rows, 1)) - np.dot(rows, np.roll(cols, 1)))) / 2

    contour = approximate_polygon(max(contours, key=area), tolerance=0.5) - 1  # undo the padding
    if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
        contour = contour[:-1]
    return [[round(float(col), 2), round(float(row), 2)] for row, col in contour]


class CvatInteractor:
    """The contract over a warm segmenter: `handle(body)` -> (HTTP status, JSON-able body)."""

    def __init__(self, segmenter: WarmSegmenter, max_pixels: int = MAX_PIXELS) -> None:
        self.segmenter = segmenter
        self.max_pixels = max_pixels

    def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            return 200, self.interact(parse_request(body, self.max_pixels))
        except ImageTooLargeError as error:
            return 413, {"error": str(error)}
        except (FbrsError, ValueError) as error:
            return 400, {"error": str(error)}

    def interact(self, request: InteractorRequest) -> dict[str, Any]:
        key = "sha256:" + hashlib.sha256(request.image_bytes).hexdigest()

        def decode() -> np.ndarray:
            image = load_image(request.image_bytes, max_pixels=self.max_pixels, what='"image"')
            if image.shape[:2] != (request.height, request.width):
                raise InvalidImageError('"image" decodes to another size than its header states')
            return image

        segmentation = self.segmenter.segment(key, decode, request.clicks, request.box,
                                              threshold=request.threshold, in_click_order=False)
        return {"mask": segmentation.mask.astype(np.uint8).tolist(),
                "points": largest_outer_contour(segmentation.mask)}


# -- nuclio ---------------------------------------------------------------------------------------------
def init_context(context: Any, segmenter: WarmSegmenter | None = None) -> None:
    """nuclio's start hook: load the model once per worker (FBRS_MODE, FBRS_MODEL name mode and weights)."""
    import os

    if segmenter is None:
        from fbrs.models import load_default_model, load_model

        path = os.environ.get("FBRS_MODEL")
        model = load_model(path) if path else load_default_model()
        segmenter = WarmSegmenter(model, mode=os.environ.get("FBRS_MODE", "f-BRS-B"),
                                  cache_size=int(os.environ.get("FBRS_CACHE_SIZE", "4")))
    context.user_data.interactor = CvatInteractor(segmenter)
    context.logger.info(f"fbrs interactor ready: mode {segmenter.mode}")


def handler(context: Any, event: Any) -> Any:
    """nuclio's request hook: event.body is the request (nuclio gives a dict for JSON, else bytes)."""
    status, body = context.user_data.interactor.handle(event.body)
    if status != 200:
        context.logger.warn(f"fbrs interactor: {status} {body['error']}")
    return context.Response(body=json.dumps(body, separators=(",", ":")), headers={},
                            content_type="application/json", status_code=status)


# -- plain HTTP (`fbrs serve cvat`) -------------------------------------------------------------------------
def create_cvat_app(interactor: CvatInteractor, allowed_hosts: Any = ("*",)):
    """FastAPI app: POST / (and /interact) take the request above, GET /health answers {"status": "UP"}."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from fbrs.app.guards import BodySizeLimit, HostGuard

    app = FastAPI(title="fbrs CVAT interactor", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health():
        return {"status": "UP", "mode": interactor.segmenter.mode, "kind": "interactor", "version": 2}

    async def interact(request: Request):
        raw = await request.body()
        status, body = await run_in_threadpool(interactor.handle, raw)
        if status != 200:
            return JSONResponse(body, status_code=status)
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    app.add_api_route("/", interact, methods=["POST"])
    app.add_api_route("/interact", interact, methods=["POST"])
    return HostGuard(BodySizeLimit(app, lambda scope: MAX_IMAGE_BASE64_CHARS + 1024 * 1024),
                     allowed_hosts=allowed_hosts)
