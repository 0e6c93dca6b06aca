"""Bounding-box helpers for Zoom-In. Boxes are (rmin, rmax, cmin, cmax), inclusive, in pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fbrs.inference.clicks import Click

Box = tuple[int, int, int, int]


def bbox_from_mask(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(box: Box, ratio: float, min_size: float | None = None) -> Box:
    """Grow a box around its centre by `ratio` (at least `min_size` per side). Rounds half to even."""
    rmin, rmax, cmin, cmax = box
    row_centre, col_centre = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    height, width = ratio * (rmax - rmin + 1), ratio * (cmax - cmin + 1)
    if min_size is not None:
        height, width = max(height, min_size), max(width, min_size)
    return (
        int(round(row_centre - 0.5 * height)),
        int(round(row_centre + 0.5 * height)),
        int(round(col_centre - 0.5 * width)),
        int(round(col_centre + 0.5 * width)),
    )


def clamp_bbox(box: Box, rmin: int, rmax: int, cmin: int, cmax: int) -> Box:
    return max(rmin, box[0]), min(rmax, box[1]), max(cmin, box[2]), min(cmax, box[3])


def _segments_iou(first: Sequence[int], second: Sequence[int]) -> float:
    a, b = first
    c, d = second
    intersection = max(0, min(b, d) - max(a, c) + 1)
    union = max(1e-6, max(b, d) - min(a, c) + 1)
    return intersection / union


def bbox_iou(first: Box, second: Box) -> float:
    """Product of the row and column interval IoUs (inclusive lengths), as the original."""
    return _segments_iou(first[:2], second[:2]) * _segments_iou(first[2:4], second[2:4])


def object_roi(mask: np.ndarray, clicks: Sequence[Click], expansion_ratio: float, min_crop_size: float) -> Box:
    """The Zoom-In region: bbox of the mask plus the positive clicks, expanded and clamped to the image."""
    mask = mask.copy()
    for click in clicks:
        if click.is_positive:
            mask[int(click.y), int(click.x)] = True
    box = expand_bbox(bbox_from_mask(mask), expansion_ratio, min_crop_size)
    return clamp_bbox(box, 0, mask.shape[0] - 1, 0, mask.shape[1] - 1)


def clicks_inside_roi(roi: Box, clicks: Sequence[Click]) -> bool:
    """True when every positive click lies inside `roi` (upper bounds exclusive, as the original)."""
    rmin, rmax, cmin, cmax = roi
    return all(
        rmin <= click.y < rmax and cmin <= click.x < cmax for click in clicks if click.is_positive
    )
