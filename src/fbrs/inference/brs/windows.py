"""Small windows of a low-resolution map that carry the whole f-BRS gradient.

The BRS loss reads the probabilities only inside the click squares. Each full-resolution logit is a
bilinear mix of a 2x2 low-resolution neighbourhood, and each low-resolution logit of the decoder/head
depends only on inputs within `radius` pixels (the sum of its 3x3 convolutions' half-widths). So the
gradient of the loss with respect to the head's input is zero outside the click neighbourhoods widened
by `radius`, and forward+backward on windows there gives the same gradient as on the whole map - the
windows only have to stop at the map border exactly where the map does, so that the zero padding of
every convolution stays where it is (windows are shifted inside the map, never padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from fbrs.models.deeplab import upsample_to


def loss_support(positive: torch.Tensor, negative: torch.Tensor, low_size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) bool: the low-resolution pixels whose logits reach a click square through the bilinear
    upsampling (align_corners=True) to the size of `positive`/`negative` ((B, 1, H, W) 0/1 masks).

    Found with the adjoint of the upsampling itself, so it follows torch's own index arithmetic."""
    squares = ((positive + negative) > 0).to(torch.float32)
    low = torch.zeros((squares.shape[0], 1, *low_size), dtype=torch.float32, requires_grad=True)
    with torch.enable_grad():
        (reach,) = torch.autograd.grad((upsample_to(low, squares.shape[2:]) * squares).sum(), low)
    return (reach[:, 0] > 0).numpy()


@dataclass(frozen=True)
class Windows:
    """P equal windows (height x width) of a (B, C, h, w) map: window p is rows top[p]:top[p]+height,
    columns left[p]:left[p]+width of batch item batch_index[p]. owner (P, 1, height, width) float32 is 1
    where the window is the one responsible for a support pixel (every support pixel has exactly one)."""

    batch_index: torch.Tensor  # (P,) int64
    top: torch.Tensor  # (P,) int64
    left: torch.Tensor  # (P,) int64
    height: int
    width: int
    owner: torch.Tensor  # (P, 1, height, width) float32

    @classmethod
    def whole_maps(cls, batch: int, height: int, width: int) -> Windows:
        """One window per batch item covering all of it."""
        zeros = torch.zeros(batch, dtype=torch.int64)
        owner = torch.ones((batch, 1, height, width), dtype=torch.float32)
        return cls(torch.arange(batch), zeros, zeros, height, width, owner)

    @property
    def count(self) -> int:
        return int(self.batch_index.shape[0])

    def crop(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (P, C, height, width); one indexing op, so autograd scatters back in one go."""
        rows = self.top.view(-1, 1, 1) + torch.arange(self.height).view(1, -1, 1)
        cols = self.left.view(-1, 1, 1) + torch.arange(self.width).view(1, 1, -1)
        # Advanced indices on dims 0, 2, 3 put the window dims first: (P, height, width, C).
        return maps[self.batch_index.view(-1, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def plan_windows(support: np.ndarray, radius: int, max_area_fraction: float = 0.5) -> Windows:
    """Cover every True pixel of `support` (B, h, w) with windows that reach `radius` pixels past it.

    One window per 8-connected component of the support, all of the size of the largest one (so they
    run as one batch), each shifted to lie inside the map. Returns None when the windows would cover
    more than `max_area_fraction` of the maps (the whole maps are then cheaper) or the support is empty.
    """
    batch, height, width = support.shape
    components = []  # (batch item, label map of the item, label, row slice, column slice)
    for item in range(batch):
        labels, _ = ndimage.label(support[item], structure=np.ones((3, 3), dtype=bool))
        for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
            components.append((item, labels, label, rows, cols))
    if not components:
        empty = torch.zeros(0, dtype=torch.int64)
        return Windows(empty, empty, empty, 0, 0, torch.zeros((0, 1, 0, 0), dtype=torch.float32))
    window_height = min(height, max(c[3].stop - c[3].start for c in components) + 2 * radius)
    window_width = min(width, max(c[4].stop - c[4].start for c in components) + 2 * radius)
    if len(components) * window_height * window_width > max_area_fraction * batch * height * width:
        return Windows.whole_maps(batch, height, width)
    tops, lefts, owners = [], [], []
    for _item, labels, label, rows, cols in components:
        top = min(max(rows.start - radius, 0), height - window_height)
        left = min(max(cols.start - radius, 0), width - window_width)
        tops.append(top)
        lefts.append(left)
        owners.append(labels[top : top + window_height, left : left + window_width] == label)
    return Windows(
        batch_index=torch.tensor([c[0] for c in components], dtype=torch.int64),
        top=torch.tensor(tops, dtype=torch.int64),
        left=torch.tensor(lefts, dtype=torch.int64),
        height=window_height,
        width=window_width,
        owner=torch.from_numpy(np.stack(owners)[:, None].astype(np.float32)),
    )
