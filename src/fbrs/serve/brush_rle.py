"""Label Studio's brush RLE, written and read by Label Studio's own code, never a copy of it.

The encoder lives in label-studio-sdk (`label_studio_sdk.converter.brush`, which Label Studio itself
ships) and, as the same module, in the older label-studio-converter (`label_studio_converter.brush`).
The sdk is used where installed; `pip install fbrs[label-studio]` brings the converter, which unlike the
sdk pins neither numpy nor OpenCV. A brush RLE holds the RGBA pixels of the mask image, row by row; Label
Studio reads the alpha channel.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from fbrs.errors import MissingDependencyError

_MODULES = ("label_studio_sdk.converter.brush", "label_studio_converter.brush")


def brush_module() -> ModuleType:
    """Label Studio's brush module; MissingDependencyError naming the extra when neither is installed."""
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(
        "the Label Studio backend writes masks with Label Studio's brush RLE encoder: "
        "pip install 'fbrs[label-studio]' (label-studio-converter) or label-studio-sdk"
    )


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> Label Studio brush RLE (a list of byte values)."""
    return brush_module().mask2rle(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> (H, W) bool mask (alpha > 0), with Label Studio's decoder."""
    pixels = brush_module().decode_rle(rle)
    if pixels.size != height * width * 4:
        raise ValueError(f"the RLE holds {pixels.size} values, not {height}x{width}x4")
    return pixels.reshape(height, width, 4)[:, :, 3] > 0
