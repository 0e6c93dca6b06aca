"""Iterative click sampling: clicks placed on the model's own errors during training (as RITM does).

The Xu et al. clicks of `click_sampler` are random; the evaluation robot (and a user) clicks where the current
mask is wrong. With `clicks.iterative_max > 0` the trainer runs the model without gradients a few times per
batch and adds, after each pass, one click per sample where the robot would put it; the batch is then
trained on with those clicks. Everything runs on the batch's device with pooling operations, so a GPU job
keeps its pace (a SciPy distance transform per sample and pass would not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_depth(region: torch.Tensor, max_depth: int) -> torch.Tensor:
    """Chessboard distance of each pixel of the boolean maps `region` (B, 1, H, W) to the nearest pixel outside
    it (outside the image counts as outside, as the robot's padded distance transform), capped at
    `max_depth`. Returns float (B, 1, H, W); 0 outside the region."""
    current = region.float()
    depth = torch.zeros_like(current)
    for _ in range(max_depth):
        if not bool(current.any()):
            break
        depth += current
        padded = F.pad(current, (1, 1, 1, 1), value=0.0)
        current = -F.max_pool2d(-padded, kernel_size=3, stride=1)  # erosion by a 3x3 square
    return depth


def add_error_clicks(
    probs: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    points: torch.Tensor,
    threshold: float = 0.49,
    stride: int = 4,
    max_depth: int = 32,
) -> torch.Tensor:
    """One more click per sample, where the evaluation robot would click next.

    probs, masks, valid: (B, 1, H, W) float (probabilities, 0/1 target, 0/1 valid pixels); points: (B, 2N, 2)
    float (y, x) in the model's layout (first N positive, last N negative, free rows (-1, -1)). The error maps
    (missed object, false background) are shrunk by `stride` for speed; the click goes to the deepest pixel of
    the error kind whose deepest pixel is deeper (missed object: positive), at the centre of
    its `stride` cell. A sample without errors or without a free row of that kind keeps its clicks.
    Returns a new points tensor.
    """
    prediction = probs > threshold
    target = masks > 0.5
    usable = valid > 0.5
    missed = (target & ~prediction & usable).float()
    extra = (~target & prediction & usable).float()
    if stride > 1:
        missed = F.avg_pool2d(missed, stride, ceil_mode=True) > 0.5
        extra = F.avg_pool2d(extra, stride, ceil_mode=True) > 0.5
    missed_depth = region_depth(missed, max_depth)
    extra_depth = region_depth(extra, max_depth)
    batch, _, height, width = probs.shape
    low_width = missed_depth.shape[3]
    missed_best, missed_index = missed_depth.flatten(1).max(dim=1)
    extra_best, extra_index = extra_depth.flatten(1).max(dim=1)
    per_kind = points.shape[1] // 2
    result = points.clone()
    for item in range(batch):
        positive = bool(missed_best[item] > extra_best[item])  # ties: negative, as the robot
        depth = missed_best[item] if positive else extra_best[item]
        if depth <= 0:
            continue
        index = int(missed_index[item] if positive else extra_index[item])
        y = min((index // low_width) * stride + stride // 2, height - 1)
        x = min((index % low_width) * stride + stride // 2, width - 1)
        rows = range(0, per_kind) if positive else range(per_kind, 2 * per_kind)
        free = [row for row in rows if result[item, row, 0] < 0]
        if free:
            result[item, free[0]] = torch.tensor([y, x], dtype=result.dtype, device=result.device)
    return result
