"""Image input handling: everything that enters fbrs becomes an (H, W, 3) uint8 RGB array here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fbrs.errors import InvalidImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to (H, W, 3) uint8 RGB.

    Accepted: (H, W) or (H, W, 1) grayscale, (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped), with dtype
    uint8, uint16 (scaled by 1/257), bool, or float in [0, 1]. Anything else raises InvalidImageError.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(
            f"image must have shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"image is empty: shape {tuple(image.shape)}")
    image = image[:, :, :3]
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise InvalidImageError("float images must hold finite values in [0, 1]")
        image = np.round(image * 255.0).astype(np.uint8)
    else:
        raise InvalidImageError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float")
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; raises InvalidImageError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(pil).astype(np.uint16)
            elif pil.mode in ("RGB", "L", "RGBA"):
                array = np.asarray(pil)
            else:
                array = np.asarray(pil.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"cannot read image {path}: {error}") from None
    return as_rgb_uint8(array)
