"""A guard on the f-BRS solution: a click must never wreck the mask.

The click loss only sees the click squares, so L-BFGS may satisfy a click by flipping a large part of
the mask far from every click (Berkeley 388016 with f-BRS-B: IoU 0.82 -> 0.01 at the second click).
The guard compares the refined mask with the network's own answer at this click (scale 1, bias 0 at the
insertion point) and counts the pixels that differ *far* from every click, relative to the union of the
two masks. Above `max_far_change` the solution is damped: the optimisation variables are scaled towards
the network's answer (x * t for t in `damping`) until the far change is small enough, and the network's
own answer is the last resort. Near the clicks the refinement is free: that is where it must act.

Off by default (`FeatureBRS(guard=None)`): the paper's modes and their goldens are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fbrs.inference.clicks import Click


@dataclass(frozen=True)
class GuardConfig:
    """radius: "near a click" = within radius * sqrt(|union of the two masks|) pixels of it (a fraction
    of the object's size, so the same value fits a Zoom-In crop and SAM's whole-image frame), at least
    `min_radius` pixels of the refiner's frame. max_far_change: the largest accepted number of far pixels
    that the refinement flips, as a fraction of the union of the refined mask and the network's own mask.
    damping: the fractions t of the solution tried in turn when it is rejected (then t = 0: the network's
    own answer). radius 0.25 and max_far_change 0.2 were chosen on held-out training objects
    (benchmarks/guard_options.py; table in docs/evaluation.md)."""

    radius: float = 0.25
    max_far_change: float = 0.2
    damping: tuple[float, ...] = (0.5, 0.25)
    min_radius: float = 5.0


def far_from_clicks(clicks_lists: Sequence[Sequence[Click]], height: int, width: int, radius: float) -> torch.Tensor:
    """(B, 1, height, width) bool: pixels farther than `radius` from every click of their batch item
    (clicks in the frame's pixels, (y, x))."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    columns = torch.arange(width, dtype=torch.float32).view(1, -1)
    far = torch.ones((len(clicks_lists), 1, height, width), dtype=torch.bool)
    for index, clicks in enumerate(clicks_lists):
        for click in clicks:
            near = (rows - click.y) ** 2 + (columns - click.x) ** 2 <= radius**2
            far[index, 0] &= ~near
    return far


def far_change(
    logits: torch.Tensor, reference: torch.Tensor, clicks_lists: Sequence[Sequence[Click]],
    config: GuardConfig, threshold: float,
) -> float:
    """Pixels where the masks of `logits` and `reference` ((B, 1, h, w) logits) differ farther than the
    radius from every click, as a fraction of the union of both masks (0 when both are empty)."""
    logit_threshold = float(np.log(threshold / (1 - threshold)))
    mask = logits.detach() > logit_threshold
    reference_mask = reference.detach() > logit_threshold
    union = float((mask | reference_mask).sum())
    if union == 0:
        return 0.0
    per_item = union / max(1, logits.shape[0])
    radius = max(config.min_radius, config.radius * float(np.sqrt(per_item)))
    far = far_from_clicks(clicks_lists, logits.shape[2], logits.shape[3], radius)
    return float(((mask ^ reference_mask) & far).sum()) / union


def guarded_solution(
    config: GuardConfig,
    logits_at: Callable[[np.ndarray], torch.Tensor],
    solution: np.ndarray,
    solution_logits: torch.Tensor,
    clicks_lists: Sequence[Sequence[Click]],
    threshold: float,
) -> tuple[np.ndarray, torch.Tensor, float]:
    """-> (variables, logits, t): the refined `solution` (t = 1) if its mask changes little far from the
    clicks relative to the network's own answer `logits_at(0)`, else the first damped `t * solution` that
    does, else the network's own answer (t = 0). `logits_at(x)`: flat variables -> (B, 1, h, w) logits."""
    zero = np.zeros_like(solution)
    reference = logits_at(zero)
    if far_change(solution_logits, reference, clicks_lists, config, threshold) <= config.max_far_change:
        return solution, solution_logits, 1.0
    for fraction in config.damping:
        candidate = (solution * fraction).astype(solution.dtype)
        logits = logits_at(candidate)
        if far_change(logits, reference, clicks_lists, config, threshold) <= config.max_far_change:
            return candidate, logits, float(fraction)
    return zero, reference, 0.0


def resolve_guard(value: GuardConfig | bool | None, mode_default: bool) -> GuardConfig | None:
    """A predictor's `guard` option -> the refiner's: None = the mode's default (on for the registered
    "...-guarded" modes), False = off, True = GuardConfig(), or a GuardConfig as given."""
    if value is None:
        value = mode_default
    if isinstance(value, GuardConfig):
        return value
    if value is True:
        return GuardConfig()
    if value is False:
        return None
    raise TypeError(f"guard must be None, a bool or a GuardConfig, got {type(value).__name__}")
