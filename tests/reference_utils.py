"""Helpers shared by the golden-reference tests."""

from __future__ import annotations

import numpy as np
import torch

from fbrs.images import IMAGENET_MEAN, IMAGENET_STD


def normalise(image_uint8: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,H,W) float32, as the original ToTensor + Normalize."""
    tensor = torch.from_numpy(image_uint8).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((tensor - mean) / std)[None]
