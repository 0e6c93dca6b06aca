"""Distance maps: how clicks enter the network.

For every pixel (r, c) and click (y, x) the distance is normalised by `norm_radius`; each channel takes the
minimum over its clicks and is squashed with tanh(2 d). Channel 0 holds positive clicks, channel 1 negative
ones; a kind without clicks gives a map of ones. Vectorised over pixels and clicks (no per-click loop).
"""

from __future__ import annotations

import torch
from torch import nn

# Distance squared given to padding points (-1, -1); tanh(2 * 1e3) == 1 in float32, i.e. "no click".
_INVALID_DISTANCE_SQUARED = 1e6


def distance_maps(
    points: torch.Tensor, height: int, width: int, norm_radius: float = 260.0, spatial_scale: float = 1.0
) -> torch.Tensor:
    """Encode clicks as two distance maps.

    Args:
        points: (B, 2N, 2) float32 or float64 (y, x) in input pixels: the first N rows are positive clicks, the last N
            negative; rows with max(y, x) < 0 are padding. Fractional coordinates are used as they are.
        height, width: size of the maps (the network input size).
        norm_radius: distance (in input pixels) that maps to tanh(2) ~ 0.96.
        spatial_scale: the maps are computed on a grid `spatial_scale` times the input resolution.

    Returns:
        (B, 2, height, width) float32 in [0, 1): channel 0 positive, channel 1 negative.
    """
    batch, num_rows, _ = points.shape
    num_points = num_rows // 2
    # float64 points keep their precision through the subtraction, which is then rounded once to float32,
    # as the original's in-place float32 += float64 does (the robot's clicks reach it as float64 after
    # Zoom-In); float32 points are used as they are.
    compute_dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    points = points.reshape(-1, 2).to(compute_dtype)
    invalid = points.max(dim=1).values < 0
    rows = torch.arange(height, dtype=torch.float32, device=points.device).to(compute_dtype)
    cols = torch.arange(width, dtype=torch.float32, device=points.device).to(compute_dtype)
    scaled = points * spatial_scale
    denominator = norm_radius * spatial_scale
    # Same operation order as the original (subtract, divide, square, add) so results agree bit for bit.
    row_offsets = (rows[None, :] - scaled[:, :1]).to(torch.float32)  # (P, H)
    col_offsets = (cols[None, :] - scaled[:, 1:]).to(torch.float32)  # (P, W)
    row_term = (row_offsets / denominator) ** 2
    col_term = (col_offsets / denominator) ** 2
    squared = row_term[:, :, None] + col_term[:, None, :]  # (P, H, W)
    squared[invalid] = _INVALID_DISTANCE_SQUARED
    squared = squared.view(batch * 2, num_points, height, width).min(dim=1).values
    return torch.tanh(torch.sqrt(squared).mul_(2)).view(batch, 2, height, width)


class DistanceMaps(nn.Module):
    """nn.Module wrapper of `distance_maps` holding the normalisation radius."""

    def __init__(self, norm_radius: float = 260.0, spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.norm_radius = norm_radius
        self.spatial_scale = spatial_scale

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """image: (B, C, H, W) (only its size is used); points: (B, 2N, 2) (y, x). -> (B, 2, H, W)."""
        return distance_maps(points, image.shape[2], image.shape[3], self.norm_radius, self.spatial_scale)
