"""The BRS objective: make the prediction agree with every click."""

from __future__ import annotations

import torch


def click_mask_loss(
    probs: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, float, float]:
    """Mean squared violation of the clicks (the original `BRSMaskLoss`).

    probs, positive, negative: (B,1,H,W); positive/negative are the 0/1 click squares.
    Returns (loss, largest positive violation, largest negative violation); the maxima let the
    optimiser stop as soon as every click is on the right side of the threshold.
    """
    positive_diff = (1 - probs) * positive
    negative_diff = probs * negative
    loss = torch.sum(positive_diff**2) / (torch.sum(positive) + eps)
    loss = loss + torch.sum(negative_diff**2) / (torch.sum(negative) + eps)
    with torch.no_grad():
        max_positive = torch.max(torch.abs(positive_diff)).item()
        max_negative = torch.max(torch.abs(negative_diff)).item()
    return loss, max_positive, max_negative


def batch_mask_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """IoU per batch item of two boolean (B,...) masks; items whose union is empty are left out."""
    dims = tuple(range(1, first.dim()))
    union = torch.mean((first | second).float(), dim=dims)
    intersection = torch.mean((first & second).float(), dim=dims)
    nonempty = union > 0
    return intersection[nonempty] / union[nonempty]
