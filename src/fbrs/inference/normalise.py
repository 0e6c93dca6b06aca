"""Image normalisation for the network: uint8 RGB -> float32, /255, ImageNet mean and std."""

from __future__ import annotations

import numpy as np
import torch

from fbrs.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["normalise_image", "normalise_tensor"]


def normalise_image(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,H,W) float32: /255 then ImageNet mean/std (the original ToTensor+Normalize)."""
    return normalise_tensor(torch.from_numpy(image).permute(2, 0, 1)[None])


def normalise_tensor(image: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) uint8 -> float32 normalised as `normalise_image`; float input is returned as it is.

    Element-wise, so normalising a crop gives bit for bit the crop of the normalised image: the predictor
    keeps the image as uint8 (a quarter of the memory) and normalises only what the network sees."""
    if image.is_floating_point():
        return image
    tensor = image.float().div(255)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return (tensor - mean) / std
