"""The predictor interface shared by every classical baseline.

A baseline only implements `_prepare(image)` (per-image precomputation) and
`_segment(positive_seeds, negative_seeds)` (one solve); clicks, validation, undo, state, the working
resolution and the seeds live here, once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from skimage.transform import resize

from fbrs.baselines.seeds import SEED_RADIUS, click_seeds
from fbrs.errors import InvalidClickError, InvalidImageError
from fbrs.images import as_rgb_uint8
from fbrs.inference.clicks import Click


class SeededPredictor:
    """Base class: an interactive segmenter driven by seeds painted around the clicks.

    Args:
        seed_radius: radius in pixels (original image) of the disk seed each click paints.
        border_background: treat the one-pixel image frame as background seeds (see `seeds.click_seeds`).
        max_side: the image is downscaled (area averaging) so that its longer side is at most this many
            pixels before solving; probabilities are upsampled back (bilinear). None = full resolution,
            -1 (the default) = the method's own `default_max_side` (see docs/baselines.md).
    """

    name = "seeded"
    default_max_side: int | None = None

    def __init__(
        self,
        seed_radius: float = SEED_RADIUS,
        border_background: bool = True,
        max_side: int | None = -1,
    ) -> None:
        if not (isinstance(seed_radius, (int, float)) and seed_radius >= 0):
            raise ValueError(f"seed_radius must be a number >= 0, got {seed_radius!r}")
        self.seed_radius = float(seed_radius)
        self.border_background = bool(border_background)
        self.max_side = self.default_max_side if max_side == -1 else max_side
        self._image: np.ndarray | None = None
        self._working_shape: tuple[int, int] = (0, 0)
        self._clicks: list[Click] = []
        self._history: list[np.ndarray] = []

    # ----------------------------------------------------------------------------------- public API
    def set_image(self, image: np.ndarray) -> None:
        """Set the image to segment: (H, W, 3) uint8 RGB (grayscale/RGBA/float accepted, see
        fbrs.images.as_rgb_uint8). Forgets all clicks."""
        image = as_rgb_uint8(image)
        self._image = image
        working = image
        height, width = image.shape[:2]
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            shape = (max(1, round(height * scale)), max(1, round(width * scale)))
            working = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
            working = np.clip(np.round(working), 0, 255).astype(np.uint8)
        self._working_shape = working.shape[:2]
        self._prepare(working)
        self.reset()

    def add_click(self, y: float, x: float, positive: bool) -> np.ndarray:
        """Add a click at (y, x) = (row, col) pixel coordinates of the image given to set_image.

        Returns the (H, W) float32 foreground score map in [0, 1] after this click (hard baselines
        return exactly 0.0 / 1.0; the evaluation thresholds at 0.49).
        """
        image = self._require_image()
        height, width = image.shape[:2]
        try:
            y_value, x_value = float(y), float(x)
        except (TypeError, ValueError):
            raise InvalidClickError(f"click (y={y!r}, x={x!r}) must have numeric coordinates") from None
        if not (math.isfinite(y_value) and math.isfinite(x_value)):
            raise InvalidClickError(f"click (y={y_value}, x={x_value}) has a non-finite coordinate")
        if not (0 <= y_value <= height - 1 and 0 <= x_value <= width - 1):
            raise InvalidClickError(
                f"click (y={y_value:g}, x={x_value:g}) is outside the image (height {height}, width {width})"
            )
        self._clicks.append(Click(y=y_value, x=x_value, is_positive=bool(positive)))
        probabilities = self._predict()
        # Read-only, so the history, get_state and the caller share one array per click (as the
        # learned Predictor does); .copy() it to modify it.
        probabilities.flags.writeable = False
        self._history.append(probabilities)
        return probabilities

    def undo(self) -> np.ndarray | None:
        """Remove the last click. Returns the (H, W) float32 map after the remaining clicks, or None
        when no click remains (nothing to undo also gives None)."""
        if not self._clicks:
            return None
        self._clicks.pop()
        self._history.pop()
        return self._history[-1] if self._history else None

    def reset(self) -> None:
        """Forget all clicks (the image stays)."""
        self._clicks = []
        self._history = []

    @property
    def clicks(self) -> list[Click]:
        """The clicks so far, oldest first (a copy)."""
        return list(self._clicks)

    def get_state(self) -> dict[str, Any]:
        """Everything needed to return to this point later with set_state (same image)."""
        return {"clicks": list(self._clicks), "history": list(self._history)}  # read-only arrays, shared

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from get_state (made on the current image)."""
        self._require_image()
        clicks = list(state["clicks"])
        history = [_read_only(np.asarray(p, dtype=np.float32)) for p in state["history"]]
        if len(history) != len(clicks):
            raise ValueError(f"state has {len(clicks)} clicks but {len(history)} stored predictions")
        if history and history[0].shape != self._image.shape[:2]:
            raise ValueError(
                f"state was made on an image of shape {history[0].shape}, current is {self._image.shape[:2]}"
            )
        self._clicks = [Click(y=float(c.y), x=float(c.x), is_positive=bool(c.is_positive)) for c in clicks]
        self._history = history

    # ------------------------------------------------------------------------------------ internals
    def _require_image(self) -> np.ndarray:
        if self._image is None:
            raise InvalidImageError(f"{self.name}: call set_image(image) before adding clicks")
        return self._image

    def _predict(self) -> np.ndarray:
        image = self._require_image()
        height, width = image.shape[:2]
        work_height, work_width = self._working_shape
        scale_y, scale_x = work_height / height, work_width / width
        # Pixel centres map as (y + 0.5) * scale - 0.5, consistent with the area-averaging resize.
        working_clicks = [
            ((c.y + 0.5) * scale_y - 0.5, (c.x + 0.5) * scale_x - 0.5, c.is_positive) for c in self._clicks
        ]
        radius = self.seed_radius * min(scale_y, scale_x)
        positive, negative = click_seeds(working_clicks, self._working_shape, radius, self.border_background)
        scores = np.asarray(self._segment(positive, negative), dtype=np.float32)
        if scores.shape != (height, width):
            scores = resize(scores, (height, width), order=1, anti_aliasing=False).astype(np.float32)
            # The user's own seeds hold exactly at full resolution, whatever the upsampling blurred.
            positive, negative = click_seeds(
                [(c.y, c.x, c.is_positive) for c in self._clicks], (height, width), self.seed_radius, False
            )
            scores[positive] = 1.0
            scores[negative] = 0.0
        return np.clip(scores, 0.0, 1.0).astype(np.float32)

    def _prepare(self, image: np.ndarray) -> None:
        """Per-image precomputation on the (h, w, 3) uint8 working image."""

    def _segment(self, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """positive / negative: disjoint (h, w) bool seed masks at working resolution.
        Returns the (h, w) foreground score map in [0, 1]."""
        raise NotImplementedError


def build_from_options(predictor_class: Callable[..., SeededPredictor], options: dict[str, Any]):
    """Construct `predictor_class` from the options it accepts; options meant for the learned modes
    (zoom_in, with_flip, ...) are ignored, so one option set can drive every registered mode."""
    accepted = inspect.signature(predictor_class).parameters
    return predictor_class(**{key: value for key, value in options.items() if key in accepted})


def _read_only(array: np.ndarray) -> np.ndarray:
    """`array` itself when it is already read-only (shared safely), else a read-only copy."""
    if array.flags.writeable:
        array = array.copy()
        array.flags.writeable = False
    return array
