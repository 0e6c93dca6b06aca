"""Probability maps stored as what they were made from: the undo history of a large image without a full copy
per click.

A map of a large image is the network's small output resized into the image: into the Zoom-In crop (zero
outside it) or, for the whole-image pass of a huge image, over all of it (`Predictor(max_image_side=...)`).
The history keeps that small output (a 400 px crop: 0.6 MB instead of 48 MB for a 12-megapixel image) and
`unpack` repeats the very same resize, so the map it returns is bit for bit the one the predictor returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.inference.bbox import Box


def upsample_into(source: torch.Tensor, shape: tuple[int, int], box: Box | None = None) -> torch.Tensor:
    """source (1, 1, h, w) -> (1, 1, H, W) on the CPU: bilinear (align_corners) resize to `shape`, or into the
    inclusive `box` with zeros elsewhere. The one resize of the predictor's output, shared by `UpsampledMap`."""
    if box is None:
        return F.interpolate(source, size=shape, mode="bilinear", align_corners=True).cpu()
    rmin, rmax, cmin, cmax = box
    resized = F.interpolate(source, size=(rmax - rmin + 1, cmax - cmin + 1), mode="bilinear", align_corners=True)
    full = torch.zeros((1, 1, *shape), dtype=resized.dtype)
    full[:, :, rmin : rmax + 1, cmin : cmax + 1] = resized.cpu()
    return full


@dataclass(frozen=True, eq=False)
class UpsampledMap:
    """A (H, W) map stored as `upsample_into(source, shape, box)`; source (1, 1, h, w) is never modified."""

    shape: tuple[int, int]
    box: Box | None
    source: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.source.numel() * self.source.element_size())

    def unpack(self) -> np.ndarray:
        """The full (H, W) float32 map as a new read-only array."""
        full = upsample_into(self.source, self.shape, self.box)[0, 0].numpy().astype(np.float32, copy=False)
        full.flags.writeable = False
        return full


def unpack(stored: np.ndarray | UpsampledMap | None) -> np.ndarray | None:
    """The full map of a stored one (None stays None; a plain array is returned as it is)."""
    if isinstance(stored, UpsampledMap):
        return stored.unpack()
    return stored
