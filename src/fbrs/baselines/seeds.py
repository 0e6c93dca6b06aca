"""Clicks become seeds: a disk of `SEED_RADIUS` pixels around each click, as in the protocol of the
classical methods of the paper's Table 3 (clicks are turned into small brush strokes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Radius (pixels of the original image) of the disk each click paints as a hard seed.
SEED_RADIUS = 5.0


def disk_seeds(centres: Sequence[tuple[float, float]], shape: tuple[int, int], radius: float) -> np.ndarray:
    """Paint a disk of `radius` pixels around every (y, x) centre.

    centres: (y, x) pixel coordinates (row, col; fractional allowed) inside `shape`.
    Returns an (H, W) bool mask. The pixel holding each centre is always painted, so a radius below 1
    still gives a one-pixel seed.
    """
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    reach = int(np.ceil(radius))
    for y, x in centres:
        row = min(max(int(round(y)), 0), height - 1)
        col = min(max(int(round(x)), 0), width - 1)
        top, bottom = max(row - reach, 0), min(row + reach + 1, height)
        left, right = max(col - reach, 0), min(col + reach + 1, width)
        rows, cols = np.ogrid[top:bottom, left:right]
        mask[top:bottom, left:right] |= (rows - y) ** 2 + (cols - x) ** 2 <= radius**2
        mask[row, col] = True
    return mask


def border_frame(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the one-pixel image frame."""
    frame = np.zeros(shape, dtype=bool)
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True
    return frame


def click_seeds(
    clicks: Sequence[tuple[float, float, bool]],
    shape: tuple[int, int],
    radius: float = SEED_RADIUS,
    border_background: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn (y, x, is_positive) clicks into hard foreground / background seed masks.

    With `border_background`, the one-pixel image frame is a background seed too: a single positive
    click gives no background evidence at all, and random walker, geodesic segmentation and GrowCut
    would label the whole image foreground without it. Disks are painted in click order over the
    frame, so where two seeds overlap the newer click decides (the user's latest correction wins).
    Returns (positive, negative): two disjoint (H, W) bool masks.
    """
    positive = np.zeros(shape, dtype=bool)
    negative = border_frame(shape) if border_background else np.zeros(shape, dtype=bool)
    for y, x, is_positive in clicks:
        disk = disk_seeds([(y, x)], shape, radius)
        positive = (positive | disk) if is_positive else (positive & ~disk)
        negative = (negative & ~disk) if is_positive else (negative | disk)
    return positive, negative
