"""The predictor interface shared by every classical baseline.

A baseline only implements `_prepare(image)` (per-image precomputation) and
`_segment(positive_seeds, negative_seeds)` (one solve); the working resolution and the seeds live here,
once; clicks, their check, undo / redo and states are every predictor's
(fbrs.inference.interactive.InteractivePredictor).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from skimage.transform import resize

from fbrs.baselines.seeds import SEED_RADIUS, click_seeds
from fbrs.inference.interactive import InteractivePredictor


class SeededPredictor(InteractivePredictor):
    """Base class: an interactive segmenter driven by seeds painted around the clicks.

    Args:
        seed_radius: radius in pixels (original image) of the disk seed each click paints.
        border_background: treat the one-pixel image frame as background seeds (see `seeds.click_seeds`).
        max_side: the image is downscaled (area averaging) so that its longer side is at most this many
            pixels before solving; probabilities are upsampled back (bilinear). None = full resolution,
            -1 (the default) = the method's own `default_max_side` (see docs/baselines.md).

    add_click returns the (H, W) float32 foreground score map in [0, 1] after the click (hard baselines
    return exactly 0.0 / 1.0; `mask` and the evaluation threshold it at 0.49). Undo / redo / get_state /
    set_state / predict: see `fbrs.inference.interactive.InteractivePredictor`.
    """

    name = "seeded"  # the registered mode name (fbrs.baselines.mode_specs)
    description = ""  # one line for `fbrs models` and the app
    requires: tuple[tuple[str, str], ...] = ()  # optional (module, pip package) pairs (fbrs.registry.ModeSpec)
    default_max_side: int | None = None

    def __init__(
        self,
        seed_radius: float = SEED_RADIUS,
        border_background: bool = True,
        max_side: int | None = -1,
    ) -> None:
        super().__init__()
        if not (isinstance(seed_radius, (int, float)) and seed_radius >= 0):
            raise ValueError(f"seed_radius must be a number >= 0, got {seed_radius!r}")
        self.seed_radius = float(seed_radius)
        self.border_background = bool(border_background)
        self.max_side = self.default_max_side if max_side == -1 else max_side
        self._working_shape: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ InteractivePredictor hooks
    def _load_image(self, image: np.ndarray) -> None:
        working = image
        height, width = image.shape[:2]
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            shape = (max(1, round(height * scale)), max(1, round(width * scale)))
            working = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
            working = np.clip(np.round(working), 0, 255).astype(np.uint8)
        self._working_shape = working.shape[:2]
        self._prepare(working)

    def _compute(self) -> tuple[np.ndarray, None]:
        return self._predict(), None

    # ------------------------------------------------------------------------------------ internals
    def _predict(self) -> np.ndarray:
        """The (H, W) float32 score map of the current clicks."""
        height, width = self.image_size
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
    (zoom_in, with_flip, ...) are ignored, so one option set can drive every registered mode. (The registry
    refuses, before this, names that no registered mode takes: fbrs.registry.ModeSpec.create.)"""
    accepted = inspect.signature(predictor_class).parameters
    return predictor_class(**{key: value for key, value in options.items() if key in accepted})

