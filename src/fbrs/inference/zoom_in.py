"""Zoom-In: after the first click(s), crop around the current object and run the network on the crop.

The crop (ROI) is the bounding box of the previous prediction plus the positive clicks, expanded 1.4x
(at least `min_crop_size` px a side), resized so its longer side is `target_size`. It is kept while the
positive clicks stay inside and the new box overlaps it (box IoU >= 0.5); otherwise it is recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.inference.bbox import Box, bbox_iou, clicks_inside_roi, object_roi
from fbrs.inference.clicks import Click
from fbrs.inference.normalise import normalise_tensor
from fbrs.inference.packed import upsample_into


@dataclass(frozen=True)
class ZoomInConfig:
    target_size: int = 400
    skip_clicks: int = 1  # the original code zooms from the 2nd click; the paper's text says the 3rd (2)
    expansion_ratio: float = 1.4
    min_crop_size: int = 200
    recompute_iou: float = 0.5
    prob_threshold: float = 0.5


def crop_and_resize(image: torch.Tensor, roi: Box, target_size: int) -> torch.Tensor:
    """Crop (B,C,H,W) to the inclusive ROI and resize (bilinear, align_corners) to longer side target_size.

    A uint8 image is normalised after cropping (see normalise_tensor: the same values as before)."""
    rmin, rmax, cmin, cmax = roi
    height, width = rmax - rmin + 1, cmax - cmin + 1
    scale = target_size / max(height, width)
    size = (int(round(height * scale)), int(round(width * scale)))
    crop = normalise_tensor(image[:, :, rmin : rmax + 1, cmin : cmax + 1])
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)


class ZoomIn:
    """Stateful transform: `transform` maps (image, clicks) into the crop, `inverse` pastes probs back."""

    def __init__(self, config: ZoomInConfig | None = None) -> None:
        self.config = config or ZoomInConfig()
        self.reset()

    def reset(self) -> None:
        self.roi: Box | None = None
        self._roi_image: torch.Tensor | None = None
        self._previous_probs: np.ndarray | None = None  # full-image probabilities of the last prediction
        self._applied = False
        self.image_changed = False

    @property
    def applied(self) -> bool:
        """Whether the last `transform` returned a crop (False: the whole image)."""
        return self._applied

    def transform(self, image: torch.Tensor, clicks: Sequence[Click]) -> tuple[torch.Tensor, list[Click]]:
        """image (1,C,H,W), clicks in image pixels -> (crop image, clicks in crop pixels, fractional)."""
        self.image_changed = False
        self._applied = False
        if len(clicks) <= self.config.skip_clicks or self._previous_probs is None:
            return image, list(clicks)
        mask = self._previous_probs > self.config.prob_threshold
        if not mask.any():
            return image, list(clicks)
        candidate = object_roi(mask, clicks, self.config.expansion_ratio, self.config.min_crop_size)
        if (
            self.roi is None
            or not clicks_inside_roi(self.roi, clicks)
            or bbox_iou(candidate, self.roi) < self.config.recompute_iou
        ):
            self.roi = candidate
            self._roi_image = crop_and_resize(image, candidate, self.config.target_size)
            self.image_changed = True
        self._applied = True
        return self._roi_image, self._map_clicks(clicks)

    def inverse(self, probs: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """probs (1,1,h,w) on the network input -> (1,1,H,W) on the full image (zero outside the ROI)."""
        if self._applied:
            probs = upsample_into(probs, image_size, self.roi)
        self._previous_probs = probs[0, 0].numpy()
        return probs

    def _map_clicks(self, clicks: Sequence[Click]) -> list[Click]:
        rmin, rmax, cmin, cmax = self.roi
        crop_height, crop_width = self._roi_image.shape[2:]
        return [
            click.moved(
                crop_height * (click.y - rmin) / (rmax - rmin + 1),
                crop_width * (click.x - cmin) / (cmax - cmin + 1),
            )
            for click in clicks
        ]

    def get_state(self) -> dict[str, Any]:
        return {
            "roi": self.roi,
            "roi_image": self._roi_image,
            "previous_probs": self._previous_probs,
            "applied": self._applied,
            "image_changed": self.image_changed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.roi = state["roi"]
        self._roi_image = state["roi_image"]
        self._previous_probs = state["previous_probs"]  # never modified in place: sharing is safe
        self._applied = state["applied"]
        self.image_changed = state["image_changed"]
