"""A guard on SAM's mask feedback: a click must never wreck the mask through the fed-back logits.

SAM's usual loop feeds the previous click's low-res logits back as the mask input. That anchors the mask
(NoC@90 4.59 with it, 6.34 without on held-out training objects) but sometimes the decoder, given its
own previous answer, collapses a good mask (issue 14: 0.90 -> 0.29), often while the new click itself is
respected, so neither the click loss nor a guard on the f-BRS solution (`brs.guard`, which compares with
the decoder's own answer: the collapsed one) sees it.

The guard weighs the fed-back answer against alternatives (`FeedbackGuardConfig.alternatives`): "no_mask",
the decoder run a second time without the mask input (the embedding is cached: decoder only), and
"multimask", the three multimask outputs of the decoder with the mask input (one more unrefined decoder
run; why: most collapses come at the second click, where SAM switches from its multimask choice to the
single-mask output). It keeps the
fed-back answer unless a rule prefers an alternative:

- "clicks": an alternative puts fewer of the clicks on their wrong side (the one with the fewest);
- "far": the fed-back answer changes more than `max_far_change` of the previous mask far from the new
  click (farther than radius x sqrt(|union|)), an alternative that violates no more clicks changes less
  than `far_ratio` times as much there (the one that changes least). With `signed`, only the changes far
  from every click and against the nearest click's label count (`brs.guard.GuardConfig.signed`): a
  positive click that completes the object is no collapse;
- "iou": SAM's own IoU prediction of an alternative that violates no more clicks exceeds the fed-back
  one's by `iou_margin` (the highest).

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
ALTERNATIVES = ("no_mask", "multimask")


@dataclass(frozen=True)
class FeedbackGuardConfig:
    """rules: which of RULES may choose an alternative (any one suffices). radius, max_far_change, signed,
    far_ratio: the "far" rule (radius a fraction of sqrt(|union of the previous and the new mask|), low-res
    pixels; the alternative must change less than far_ratio x the fed-back one far away). iou_margin: the
    "iou" rule. alternatives: which of ALTERNATIVES the rules choose from. Defaults chosen on held-out
    training objects (benchmarks/sam_options.py --guards; table in docs/sam.md)."""

    rules: tuple[str, ...] = ("far",)
    radius: float = 0.25
    max_far_change: float = 0.3
    signed: bool = False
    far_ratio: float = 1.0
    iou_margin: float = 0.05
    alternatives: tuple[str, ...] = ("no_mask",)

    def __post_init__(self) -> None:
        unknown = [rule for rule in self.rules if rule not in RULES]
        if unknown:
            raise ValueError(f"unknown feedback guard rule(s) {unknown}; choose from {', '.join(RULES)}")
        unknown = [name for name in self.alternatives if name not in ALTERNATIVES]
        if unknown or not self.alternatives:
            raise ValueError(f"feedback guard alternatives {list(self.alternatives)}: choose one or more of "
                             f"{', '.join(ALTERNATIVES)}")


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


@dataclass(frozen=True)
class Answer:
    """One candidate low-res answer: (1, 1, L, L) logits and SAM's IoU prediction of it."""

    logits: torch.Tensor
    iou: float


def choose_answer(
    config: FeedbackGuardConfig,
    fed: Answer,
    alternatives: Sequence[Answer],
    previous: torch.Tensor,
    clicks: Sequence[Click],
) -> tuple[str, Answer]:
    """-> ("fed", fed) or (the rule that chose an alternative, that alternative). previous: the previous
    click's (1, 1, L, L) logits; clicks in the low-res frame, the new click last."""
    fed_violations = violated_clicks(fed.logits, clicks)
    violations = [violated_clicks(answer.logits, clicks) for answer in alternatives]
    if "clicks" in config.rules and violations and min(violations) < fed_violations:
        fewest = min(violations)
        best = max((a for a, v in zip(alternatives, violations, strict=True) if v == fewest), key=lambda a: a.iou)
        return "clicks", best
    eligible = [a for a, v in zip(alternatives, violations, strict=True) if v <= fed_violations]
    if not eligible:
        return "fed", fed
    if "far" in config.rules:
        far = GuardConfig(radius=config.radius, max_far_change=config.max_far_change, signed=config.signed)
        near = [list(clicks)] if config.signed else [[clicks[-1]]]
        fed_far = far_change(fed.logits, previous, near, far, 0.5)
        if fed_far > config.max_far_change:
            changes = [far_change(answer.logits, previous, near, far, 0.5) for answer in eligible]
            least = min(range(len(eligible)), key=changes.__getitem__)
            if changes[least] < config.far_ratio * fed_far:
                return "far", eligible[least]
    if "iou" in config.rules:
        best = max(eligible, key=lambda a: a.iou)
        if best.iou > fed.iou + config.iou_margin:
            return "iou", best
    return "fed", fed


def alternative_answers(
    config: FeedbackGuardConfig,
    decoder: SamDecoder,
    embedding: ImageEmbedding,
    mask_prompt: torch.Tensor,
    multimask: bool,
    frame: torch.Tensor,
    clicks: Sequence[Click],
) -> list[Answer]:
    """The config's alternatives to the fed-back answer for `clicks` (low-res frame)."""
    answers = []
    points = points_tensor([list(clicks)])
    with torch.no_grad():
        if "no_mask" in config.alternatives:
            network = SamNetwork(decoder, embedding, None, multimask)
            answers.append(Answer(network(frame, points), float(network.last_iou)))
        if "multimask" in config.alternatives:
            network = SamNetwork(decoder, embedding, mask_prompt, False)
            features, context = network.features_at("image_tokens", frame, points)
            masks = decoder.masks_from("image_tokens", features, context.prompt, context.token_side)
            ious = context.token_side.iou_predictions[0]
            answers.extend(Answer(masks[:, i : i + 1], float(ious[i])) for i in range(1, masks.shape[1]))
    return answers


def resolve_feedback_guard(value: FeedbackGuardConfig | bool | None, mode_default: bool) -> FeedbackGuardConfig | None:
    """A predictor's `feedback_guard` option -> the config (on by default in "SAM-guarded")."""
    return config_from_option(value, mode_default, FeedbackGuardConfig, "feedback_guard")
