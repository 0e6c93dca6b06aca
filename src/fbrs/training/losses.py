"""Training losses on logits: normalized focal loss (NFL, Sofiiuk et al., AdaptIS) and BCE.

Both take logits (B, 1, H, W) float, targets (B, 1, H, W) in {0, 1} and a validity mask (B, 1, H, W)
(0 = ignored pixel: crowd regions, crop padding), and return a scalar: the mean over images of the
per-image mean over valid pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (B, 1, H, W), got {tuple(logits.shape)}")
    if targets.shape != logits.shape or valid.shape != logits.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and valid {tuple(valid.shape)} must match logits {tuple(logits.shape)}"
        )


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE, averaged over the valid pixels of each image, then over the batch."""
    _check_shapes(logits, targets, valid)
    logits, targets, valid = logits.float(), targets.float(), valid.float()
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * valid
    valid_count = valid.sum(dim=(1, 2, 3)).clamp_min(1.0)
    return (per_pixel.sum(dim=(1, 2, 3)) / valid_count).mean()


def normalized_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, gamma: float = 2.0
) -> torch.Tensor:
    """NFL: BCE weighted by the focal term (1 - p_t)^gamma, with the weights of each image rescaled so
    that they sum to its number of valid pixels.

    The rescaling is what distinguishes NFL from focal loss: the total weight (and so the gradient
    magnitude) stays that of BCE while it concentrates on the pixels still wrong, so the loss does not
    fade as most pixels become easy. The normaliser is treated as a constant (no gradient through it).
    """
    _check_shapes(logits, targets, valid)
    logits, targets, valid = logits.float(), targets.float(), valid.float()
    probabilities = torch.sigmoid(logits)
    probability_of_truth = torch.where(targets > 0.5, probabilities, 1.0 - probabilities)
    focal = (1.0 - probability_of_truth).pow(gamma) * valid
    valid_count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    normaliser = (valid_count / focal.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)).detach()
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    weighted = per_pixel * focal * normaliser
    return (weighted.sum(dim=(1, 2, 3)) / valid_count.flatten()).mean()


def build_loss(name: str, gamma: float = 2.0):
    """Return loss(logits, targets, valid) -> scalar for "nfl" or "bce"."""
    if name == "bce":
        return binary_cross_entropy
    if name == "nfl":
        return lambda logits, targets, valid: normalized_focal_loss(logits, targets, valid, gamma)
    raise ValueError(f"unknown loss {name!r}; expected 'nfl' or 'bce'")
