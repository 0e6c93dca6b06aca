"""What crosses the wire besides JSON: uploads decoded within the limits, masks and images encoded.

Uploads: `decode_image_upload` / `decode_mask_upload` check the byte count, then the pixels from the
header, before decoding (fbrs.images). Responses: a (H, W) bool mask as a 0/255 PNG or as JSON with COCO
RLE / polygons, and display copies of an image downscaled to a longest side.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse, Response

from fbrs.app.errors import PayloadTooLargeError
from fbrs.app.export import encode_rle, mask_bbox, mask_to_polygons
from fbrs.app.project import AppLimits
from fbrs.images import load_image, load_mask

MaskFormat = Literal["png", "rle", "polygons"]


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
    """(H, W) uint8/uint16 or (H, W, 3|4) uint8 -> PNG file bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG file bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
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


def mask_response(mask: np.ndarray, mask_format: MaskFormat, object_id: int | None = None) -> Response:
    """A (H, W) bool mask as a 0/255 PNG or as JSON {width, height, area, bbox, rle | polygons}."""
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


def label_map_response(labels: np.ndarray, mask_format: MaskFormat) -> Response:
    """(H, W) instance ids (0 = background) as a PNG of the ids, or JSON with one RLE / polygons per object."""
    if mask_format == "png":
        return Response(png_bytes(labels), media_type="image/png")
    return JSONResponse({
        "width": labels.shape[1], "height": labels.shape[0],
        "objects": [
            {"object_id": object_id,
             **({"rle": encode_rle(labels == object_id)} if mask_format == "rle"
                else {"polygons": mask_to_polygons(labels == object_id)})}
            for object_id in sorted(int(value) for value in np.unique(labels) if value)
        ],
    })
