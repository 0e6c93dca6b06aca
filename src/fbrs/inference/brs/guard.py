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
from typing import Any

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
    own answer). radius 0.25, max_far_change 0.2 and insist 0.3 were chosen on held-out training objects
    (benchmarks/guard_options.py; table in docs/evaluation.md); GuardConfig(insist=None) is the first
    round's guard.

    signed: count only the far flips that go against the label of the nearest click (turned on where the
    nearest click is negative, off where it is positive): a large correction in the direction the clicks
    ask for is free, destroying the object behind an older positive click is not. Only the unflipped
    items are compared (the flipped copy's clicks are mirrored). insist: after a click whose solution was
    damped or rejected, a next click of the same label near it (within the radius) is the user insisting
    there, and rejecting again stalls the robot on the same spot: for that click the largest accepted far
    change is `insist` instead of max_far_change (1.0: accept the solution; None: no such rule).

    previous_far_change: also compare with the previous click's mask (in the same frame), counting only
    the pixels far from the new click: a solution that changes more than this fraction there, and more
    than the network's own answer does, is damped too (None: no such rule). Why: with many clicks most of
    the object is "near" some click, so the first comparison no longer sees a collapse at the 7th click;
    the previous mask is what the user had accepted away from where they clicked now."""

    radius: float = 0.25
    max_far_change: float = 0.2
    damping: tuple[float, ...] = (0.5, 0.25)
    min_radius: float = 5.0
    signed: bool = False
    insist: float | None = 0.3
    previous_far_change: float | None = None


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


def nearest_click_positive(clicks_lists: Sequence[Sequence[Click]], height: int, width: int) -> torch.Tensor:
    """(B, 1, height, width) bool: whether the nearest click of the pixel's batch item is positive."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    columns = torch.arange(width, dtype=torch.float32).view(1, -1)
    positive = torch.zeros((len(clicks_lists), 1, height, width), dtype=torch.bool)
    for index, clicks in enumerate(clicks_lists):
        nearest = torch.full((height, width), float("inf"))
        for click in clicks:
            distance = (rows - click.y) ** 2 + (columns - click.x) ** 2
            closer = distance < nearest
            nearest = torch.where(closer, distance, nearest)
            positive[index, 0] = torch.where(closer, click.is_positive, positive[index, 0])
    return positive


def far_change(
    logits: torch.Tensor, reference: torch.Tensor, clicks_lists: Sequence[Sequence[Click]],
    config: GuardConfig, threshold: float,
) -> float:
    """Pixels where the masks of `logits` and `reference` ((B, 1, h, w) logits) differ farther than the
    radius from every click (with `config.signed`: and against the nearest click's label), as a fraction of
    the union of both masks (0 when both are empty)."""
    logit_threshold = float(np.log(threshold / (1 - threshold)))
    if config.signed:
        logits, reference = logits[: len(clicks_lists)], reference[: len(clicks_lists)]
    mask = logits.detach() > logit_threshold
    reference_mask = reference.detach() > logit_threshold
    union = float((mask | reference_mask).sum())
    if union == 0:
        return 0.0
    radius = click_radius(config, union / max(1, logits.shape[0]))
    height, width = logits.shape[2:]
    changed = (mask ^ reference_mask) & far_from_clicks(clicks_lists, height, width, radius)
    if config.signed:
        changed &= mask != nearest_click_positive(clicks_lists, height, width)
    return float(changed.sum()) / union


def click_radius(config: GuardConfig, area: float) -> float:
    """"Near a click": this many pixels of the frame, for a mask of `area` pixels."""
    return max(config.min_radius, config.radius * float(np.sqrt(area)))


def insisting(config: GuardConfig, clicks_lists: Sequence[Sequence[Click]], previous_fraction: float | None,
              reference: torch.Tensor, threshold: float) -> bool:
    """config.insist is set, the previous click's solution was damped or rejected, and the new click has its
    label and lies within the radius of it (radius from the area of the network's own mask, first item)."""
    if config.insist is None or previous_fraction is None or previous_fraction >= 1.0:
        return False
    clicks = clicks_lists[0]
    if len(clicks) < 2 or clicks[-1].is_positive != clicks[-2].is_positive:
        return False
    area = float((reference[0] > float(np.log(threshold / (1 - threshold)))).sum())
    distance = float(np.hypot(clicks[-1].y - clicks[-2].y, clicks[-1].x - clicks[-2].x))
    return distance <= click_radius(config, area)


def guarded_solution(
    config: GuardConfig,
    logits_at: Callable[[np.ndarray], torch.Tensor],
    solution: np.ndarray,
    solution_logits: torch.Tensor,
    clicks_lists: Sequence[Sequence[Click]],
    threshold: float,
    previous_fraction: float | None = None,
    previous_logits: torch.Tensor | None = None,
) -> tuple[np.ndarray, torch.Tensor, float]:
    """-> (variables, logits, t): the refined `solution` (t = 1) if its mask changes little far from the
    clicks relative to the network's own answer `logits_at(0)`, else the first damped `t * solution` that
    does, else the network's own answer (t = 0). `logits_at(x)`: flat variables -> (B, 1, h, w) logits.
    previous_fraction: t of the previous click (`config.insist`); previous_logits: the previous click's
    logits in this frame, or None (`config.previous_far_change`)."""
    zero = np.zeros_like(solution)
    reference = logits_at(zero)
    limit = config.max_far_change
    insists = insisting(config, clicks_lists, previous_fraction, reference, threshold)
    if insists:
        limit = config.insist
    check_previous = config.previous_far_change is not None and previous_logits is not None and not insists
    if check_previous:
        batch = len(clicks_lists)
        previous_logits = previous_logits[:batch]
        new_clicks = [[clicks[-1]] for clicks in clicks_lists]
        unsigned = GuardConfig(radius=config.radius, min_radius=config.min_radius)
        network_change = far_change(reference[:batch], previous_logits, new_clicks, unsigned, threshold)
        previous_limit = max(config.previous_far_change, network_change)

    def acceptable(logits: torch.Tensor) -> bool:
        if far_change(logits, reference, clicks_lists, config, threshold) > limit:
            return False
        if check_previous:
            return far_change(logits[:batch], previous_logits, new_clicks, unsigned, threshold) <= previous_limit
        return True

    if acceptable(solution_logits):
        return solution, solution_logits, 1.0
    for fraction in config.damping:
        candidate = (solution * fraction).astype(solution.dtype)
        logits = logits_at(candidate)
        if acceptable(logits):
            return candidate, logits, float(fraction)
    return zero, reference, 0.0


def config_from_option(value: Any, mode_default: bool, config_type: type, option: str) -> Any:
    """A predictor's on/off option that may also carry a config (`guard`, `feedback_guard`) -> the config or
    None: None = the mode's default, False = off, True = `config_type()`, or a `config_type` as given."""
    if value is None:
        value = mode_default
    if isinstance(value, config_type):
        return value
    if value is True:
        return config_type()
    if value is False:
        return None
    raise TypeError(f"{option} must be None, a bool or a {config_type.__name__}, got {type(value).__name__}")


def resolve_guard(value: GuardConfig | bool | None, mode_default: bool) -> GuardConfig | None:
    """A predictor's `guard` option -> the refiner's (on by default for the registered "...-guarded" modes)."""
    return config_from_option(value, mode_default, GuardConfig, "guard")
