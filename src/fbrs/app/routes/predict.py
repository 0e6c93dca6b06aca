"""POST /api/predict, stateless: image + clicks (+ an optional previous mask) -> mask, for annotation
platforms. No session is made: a fresh predictor from the engine takes the image and the clicks, and is
dropped with the request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from fbrs.app.context import Context
from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.errors import PayloadTooLargeError
from fbrs.app.payloads import MaskFormat, decode_image_upload, decode_mask_upload, mask_response
from fbrs.app.validation import MAX_CLICKS_PER_OBJECT, parse_clicks
from fbrs.images import ImageTooLargeError, image_size
from fbrs.inference.clicks import Click, validate_click

router = APIRouter()


@router.post("/api/predict", summary="Stateless: image + clicks -> mask (for annotation platforms)")
def predict(
    context: Context,
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
    limits = context.limits
    settings = context.parse_settings(mode, zoom_in, prob_threshold, flip)
    parsed = parse_clicks(clicks)
    data = image.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"uploaded image is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    width, height = image_size(data, what="uploaded image")
    if width * height > limits.max_image_pixels:
        raise ImageTooLargeError(f"uploaded image is {width}x{height} = {width * height} pixels; "
                                 f"the limit is {limits.max_image_pixels} pixels")
    for click in parsed:
        validate_click(click, (height, width))
    previous = None
    if previous_mask is not None:
        previous = decode_mask_upload(previous_mask.file.read(limits.max_upload_bytes + 1), width, height, limits)
    array = decode_image_upload(data, limits)
    mask = predict_mask(context.engine, settings, array, parsed)
    if previous is not None:
        mask = merge_with_previous(mask, previous, parsed)
    return mask_response(mask, mask_format)


def predict_mask(
    engine: PredictionEngine, settings: PredictorSettings, image: np.ndarray, clicks: Sequence[Click]
) -> np.ndarray:
    """The (H, W) bool mask of `clicks` (a non-empty list of the library's Click, checked to lie inside) on
    `image` ((H, W, 3) uint8 RGB): a fresh predictor for `settings` takes the image and the clicks in
    order, as a session would, and the mask is probabilities > settings.prob_threshold."""
    predictor = engine.create(settings)
    predictor.set_image(image)
    probabilities = None
    for click in clicks:
        # One click at a time under the shared model's lock, as a session takes them: a long click list
        # of one request does not hold back the clicks of people annotating meanwhile.
        with engine.model_lock:
            probabilities = predictor.add_click(click.y, click.x, click.is_positive)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape != image.shape[:2]:
        raise RuntimeError(f"predictor returned probabilities of shape {probabilities.shape}, "
                           f"expected {image.shape[:2]}")
    return probabilities > settings.prob_threshold


def merge_with_previous(mask: np.ndarray, previous: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """Combine a new prediction with the mask it corrects. mask, previous: (H, W) bool.

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
