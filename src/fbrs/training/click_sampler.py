"""Simulated user clicks for training, following Xu et al. 2016 ("Deep Interactive Object Selection").

Positives: 1..max_positive clicks inside the object, at least `positive_margin` pixels from its boundary
and `positive_spacing` pixels apart. Negatives: 0..max_negative clicks from ONE strategy per sample, as in
Xu et al.: (0) the background band within `negative_band` pixels of the object, (1) the background farther
away, (2) other objects of the same image. Negatives keep `negative_margin` pixels from the object and
`negative_spacing` pixels from each other. Ignored pixels (crowd regions, padding) never receive clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fbrs.training.config import ClickConfig

STRATEGY_NAMES = ("background_band", "far_background", "other_objects")
# Enough candidates to keep clicks spread out, few enough to keep the sampling fast on big objects.
_MAX_CANDIDATES = 4000


@dataclass(frozen=True)
class SampledClicks:
    """positives (P, 2) and negatives (Q, 2) float32 (y, x) pixel coordinates; strategy of the negatives."""

    positives: np.ndarray
    negatives: np.ndarray
    strategy: str

    def as_points(self, max_positive: int, max_negative: int) -> np.ndarray:
        """Model input layout: (max(max_positive, max_negative) * 2, 2) float32, first half positives,
        second half negatives, unused rows (-1, -1)."""
        per_kind = max(max_positive, max_negative, 1)
        points = np.full((2 * per_kind, 2), -1.0, dtype=np.float32)
        points[: len(self.positives)] = self.positives
        points[per_kind : per_kind + len(self.negatives)] = self.negatives
        return points


def _spaced_choice(candidates: np.ndarray, count: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Pick up to `count` pixels of the boolean map `candidates`, pairwise at least `spacing` apart.
    Returns (K, 2) float32 (y, x), K <= count (fewer when the region is too small)."""
    coordinates = np.argwhere(candidates)
    if count <= 0 or len(coordinates) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if len(coordinates) > _MAX_CANDIDATES:
        coordinates = coordinates[rng.choice(len(coordinates), _MAX_CANDIDATES, replace=False)]
    chosen = []
    remaining = coordinates.astype(np.float32)
    while len(chosen) < count and len(remaining) > 0:
        point = remaining[rng.integers(len(remaining))]
        chosen.append(point)
        far_enough = np.sum((remaining - point) ** 2, axis=1) >= spacing * spacing
        remaining = remaining[far_enough]
    return np.stack(chosen).astype(np.float32)


def _distance_to_zero_in_box(
    values: np.ndarray, box: tuple[int, int, int, int], margin: int, fill: float
) -> np.ndarray:
    """scipy's Euclidean distance transform of `values` (each pixel's distance to the nearest False pixel),
    computed only in the window `box` = (top, bottom, left, right, exclusive ends) of the object grown by
    `margin` and clipped to the image; pixels outside the window get `fill`.

    Exact for the two uses below. Object (margin 1): the nearest background pixel of an object pixel is
    never farther than the ring around the object's box, which is in the window, and every pixel outside the
    window is background (0 = `fill`). Background (`values` = ~object): all object pixels are in the window,
    so every window pixel is exact; outside it the distance exceeds `margin` - 1, which is all the caller
    asks. A training crop is mostly background, so this is much cheaper than the whole-crop transform.
    """
    top, bottom, left, right = box
    height, width = values.shape
    window = (
        slice(max(top - margin, 0), min(bottom + margin, height)),
        slice(max(left - margin, 0), min(right + margin, width)),
    )
    distances = np.full(values.shape, fill, dtype=np.float64)
    distances[window] = ndimage.distance_transform_edt(values[window])
    return distances


def sample_clicks(
    object_mask: np.ndarray,
    other_objects: np.ndarray | None,
    ignore: np.ndarray | None,
    config: ClickConfig,
    rng: np.random.Generator,
) -> SampledClicks:
    """Sample training clicks for one object.

    object_mask: (H, W) bool, the target (must be non-empty); other_objects: (H, W) bool, pixels of the
    image's other instances (or None); ignore: (H, W) bool, pixels where no click may land (or None).
    """
    object_mask = np.asarray(object_mask, dtype=bool)
    if not object_mask.any():
        raise ValueError("cannot sample clicks for an empty object mask")
    allowed = np.ones_like(object_mask) if ignore is None else ~np.asarray(ignore, dtype=bool)

    rows, columns = np.any(object_mask, axis=1), np.any(object_mask, axis=0)
    top, bottom = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    left, right = np.argmax(columns), len(columns) - np.argmax(columns[::-1])
    distance_inside = _distance_to_zero_in_box(object_mask, (top, bottom, left, right), 1, fill=0.0)
    positive_region = object_mask & allowed & (distance_inside > config.positive_margin)
    if not positive_region.any():
        # Thin objects: take their most interior pixels rather than no click at all.
        interior = object_mask & allowed
        if not interior.any():
            interior = object_mask
        positive_region = interior & (distance_inside >= distance_inside[interior].max())
    positive_count = int(rng.integers(1, config.max_positive + 1))
    positives = _spaced_choice(positive_region, positive_count, config.positive_spacing, rng)

    negative_count = int(rng.integers(0, config.max_negative + 1))
    background = ~object_mask & allowed
    # Beyond the band around the object's box every pixel is "far": its exact distance is never needed.
    far = float(config.negative_band + 1)
    distance_outside = _distance_to_zero_in_box(
        ~object_mask, (top, bottom, left, right), int(config.negative_band) + 1, fill=far
    )
    away_from_object = background & (distance_outside > config.negative_margin)
    regions = (
        away_from_object & (distance_outside <= config.negative_band),
        away_from_object & (distance_outside > config.negative_band),
        away_from_object & other_objects.astype(bool) if other_objects is not None else np.zeros_like(object_mask),
    )
    weights = np.array([w if region.any() else 0.0 for w, region in zip(config.strategy_weights, regions, strict=True)])
    if negative_count == 0 or weights.sum() <= 0:
        negatives = np.zeros((0, 2), dtype=np.float32)
        strategy = "none"
    else:
        index = int(rng.choice(len(regions), p=weights / weights.sum()))
        negatives = _spaced_choice(regions[index], negative_count, config.negative_spacing, rng)
        strategy = STRATEGY_NAMES[index]
    return SampledClicks(positives=positives, negatives=negatives, strategy=strategy)
