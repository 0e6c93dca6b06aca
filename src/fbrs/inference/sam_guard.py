"""A guard on SAM's mask feedback: a click must never wreck the mask through the fed-back logits.

SAM's usual loop feeds the previous click's low-res logits back as the mask input. That anchors the mask
(NoC@90 4.59 with it, 6.34 without on held-out training objects) but sometimes the decoder, given its
own previous answer, collapses a good mask (issue 14: 0.90 -> 0.29), often while the new click itself is
respected, so neither the click loss nor a guard on the f-BRS solution (`brs.guard`, which compares with
the decoder's own answer: the collapsed one) sees it.

The guard runs the decoder a second time at each click without the mask input (the embedding is cached:
decoder only) and keeps the fed-back answer unless the rule prefers the no-mask one:

- "clicks": the no-mask answer puts fewer of the clicks on their wrong side;
- "far": the fed-back answer changes more than `max_far_change` of the previous mask far from the new
  click (farther than radius x sqrt(|union|)), the no-mask answer changes less than `far_ratio` times as
  much there, and it violates no more clicks. With `signed`, only the changes far from every click and
  against the nearest click's label count (`brs.guard.GuardConfig.signed`): a positive click that
  completes the object is no collapse;
- "iou": SAM's own IoU prediction of the no-mask answer exceeds the fed-back one's by `iou_margin`, and it
  violates no more clicks.

The chosen answer is also the next click's mask input. Everything works in the decoder's low-res frame
(L x L logits, clicks as `to_low_res` rows and columns). Off by default (`SamPredictor(feedback_guard=None)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fbrs.inference.brs.guard import GuardConfig, config_from_option, far_change
from fbrs.inference.clicks import Click, points_tensor
from fbrs.inference.sam_network import SamNetwork
from fbrs.models.sam.decoder import SamDecoder
from fbrs.models.sam.image_encoder import ImageEmbedding

RULES = ("clicks", "far", "iou")


@dataclass(frozen=True)
class FeedbackGuardConfig:
    """rules: which of RULES may choose the no-mask answer (any one suffices). radius, max_far_change,
    signed, far_ratio: the "far" rule (radius a fraction of sqrt(|union of the previous and the new mask|),
    low-res pixels; the no-mask answer must change less than far_ratio x the fed-back one far away).
    iou_margin: the "iou" rule. Defaults chosen on held-out training objects (benchmarks/sam_options.py
    --guards; table in docs/sam.md)."""

    rules: tuple[str, ...] = ("far",)
    radius: float = 0.25
    max_far_change: float = 0.3
    signed: bool = False
    far_ratio: float = 1.0
    iou_margin: float = 0.05

    def __post_init__(self) -> None:
        unknown = [rule for rule in self.rules if rule not in RULES]
        if unknown:
            raise ValueError(f"unknown feedback guard rule(s) {unknown}; choose from {', '.join(RULES)}")


def violated_clicks(logits: torch.Tensor, clicks: Sequence[Click]) -> int:
    """Clicks ((y, x) in the low-res frame) whose bilinearly sampled logit of `logits` (1, 1, L, L) is on
    the wrong side of 0 (a positive click outside the mask, a negative one inside)."""
    size_y, size_x = logits.shape[2:]
    grid = logits[0, 0]
    count = 0
    for click in clicks:
        y = min(max(click.y, 0.0), size_y - 1.0)
        x = min(max(click.x, 0.0), size_x - 1.0)
        y0, x0 = int(y), int(x)
        y1, x1 = min(y0 + 1, size_y - 1), min(x0 + 1, size_x - 1)
        dy, dx = y - y0, x - x0
        top = (1 - dx) * grid[y0, x0] + dx * grid[y0, x1]
        bottom = (1 - dx) * grid[y1, x0] + dx * grid[y1, x1]
        value = float((1 - dy) * top + dy * bottom)
        count += (value <= 0) if click.is_positive else (value > 0)
    return count


def choose_answer(
    config: FeedbackGuardConfig,
    fed: torch.Tensor,
    fed_iou: float,
    free: torch.Tensor,
    free_iou: float,
    previous: torch.Tensor,
    clicks: Sequence[Click],
) -> str:
    """-> "fed" or the rule that chose the no-mask answer. fed, free, previous: (1, 1, L, L) logits (the
    fed-back answer, the no-mask answer, the previous click's answer); clicks in the low-res frame, the
    new click last."""
    fed_violations, free_violations = violated_clicks(fed, clicks), violated_clicks(free, clicks)
    if "clicks" in config.rules and free_violations < fed_violations:
        return "clicks"
    if free_violations > fed_violations:
        return "fed"
    if "far" in config.rules:
        far = GuardConfig(radius=config.radius, max_far_change=config.max_far_change, signed=config.signed)
        near = [list(clicks)] if config.signed else [[clicks[-1]]]
        fed_far = far_change(fed, previous, near, far, 0.5)
        if fed_far > config.max_far_change and far_change(free, previous, near, far, 0.5) < config.far_ratio * fed_far:
            return "far"
    if "iou" in config.rules and free_iou > fed_iou + config.iou_margin:
        return "iou"
    return "fed"


def no_mask_answer(
    decoder: SamDecoder, embedding: ImageEmbedding, multimask: bool, frame: torch.Tensor, clicks: Sequence[Click]
) -> tuple[torch.Tensor, float]:
    """The decoder's answer for `clicks` (low-res frame) without a mask input: ((1, 1, L, L) logits, SAM's
    IoU prediction of it)."""
    network = SamNetwork(decoder, embedding, None, multimask)
    with torch.no_grad():
        logits = network(frame, points_tensor([list(clicks)]))
    return logits, float(network.last_iou)


def resolve_feedback_guard(value: FeedbackGuardConfig | bool | None, mode_default: bool) -> FeedbackGuardConfig | None:
    """A predictor's `feedback_guard` option -> the config (on by default in "SAM-guarded")."""
    return config_from_option(value, mode_default, FeedbackGuardConfig, "feedback_guard")
