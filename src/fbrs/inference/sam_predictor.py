"""The SAM family's predictor: the public Predictor surface over a SamModel, with FeatureBRS on top.

Per image the encoder runs once (`SamModel.embed`, cached across predictors and objects); per click the
decoder runs on all clicks as points, plus (mask feedback) the previous click's low-res logits as SAM's
mask input. f-BRS modes optimise a per-channel scale and bias at an insertion point of the decoder with
the project's L-BFGS objective (`fbrs.inference.brs`), re-running only what follows that point. With
Zoom-In (`fbrs.inference.sam_zoom`) the decoder works on the embedding of a crop around the object from
the second click on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fbrs.inference.brs.guard import GuardConfig, config_from_option, resolve_guard
from fbrs.inference.brs.objective import BRSConfig, LBFGSConfig
from fbrs.inference.brs.refiners import FeatureBRS, NoRefinement, Refiner
from fbrs.inference.clicks import points_tensor
from fbrs.inference.interactive import InteractivePredictor, PredictorState
from fbrs.inference.merge import MergeConfig, progressive_merge
from fbrs.inference.sam_guard import (
    Answer,
    FeedbackGuardConfig,
    alternative_answers,
    choose_answer,
    resolve_feedback_guard,
)
from fbrs.inference.sam_network import OutputSwitchConfig, SamNetwork
from fbrs.inference.sam_zoom import (
    SamFrame,
    SamZoomConfig,
    clicks_in_frame,
    crop_of,
    frame_probabilities,
    mask_iou,
    next_roi,
    resample_low_res,
)
from fbrs.models.sam.decoder import SAM_INSERTIONS
from fbrs.models.sam.model import SamModel


@dataclass(frozen=True, eq=False, repr=False)
class SamState(PredictorState):
    """A `SamPredictor`'s state: `PredictorState` plus the last click's (1, 1, L, L) low-res logits (the next
    click's mask input), the frame they are in (the whole image's embedding, or Zoom-In's crop and its
    embedding), the refiner's state dict, and whether an answer in that crop has agreed with the whole image's
    (Zoom-In's agreement check, `SamZoomConfig.agreement_checks`)."""

    low_res: torch.Tensor | None
    frame: SamFrame | None
    refiner: dict[str, Any]
    crop_agreed: bool = False


class SamPredictor(InteractivePredictor):
    """Interactive segmentation of one object at a time with a SAM-style model.

    >>> predictor = SamPredictor(load_default_sam_model(), insertion=None)
    >>> predictor.set_image(rgb)                       # (H, W, 3) uint8; runs the encoder (cached)
    >>> probs = predictor.add_click(120, 80, True)    # (y, x) = (row, column); (H, W) float32 in [0, 1]

    Args:
        model: a SamModel (`fbrs.models.sam.load_default_sam_model()`, or `tiny.build_tiny_sam_model()`).
        insertion: None (the plain SAM loop) or one of SAM_INSERTIONS for f-BRS: "image_embedding" (scale
            and bias on the encoder's embedding; re-runs the whole decoder), "image_tokens" (on the
            transformer's image output; re-runs the output upscaling), "upscaled" (on the upscaled
            per-pixel features; re-runs only the hypernetwork product).
        mask_feedback: feed the previous click's low-res logits back as the mask input (SAM's usual loop).
        multimask_first_click: on the first click return the multimask output with the highest predicted
            IoU (SAM's ONNX rule), else the single-mask output.
        prob_threshold: mask threshold (0.5: logits > 0, as SAM), also used by the f-BRS early exits.
        lbfgs_max_evaluations: L-BFGS function evaluations per click (20, as the DeepLab modes).
        max_clicks: refuse clicks beyond this many (None: no limit).
        guard: f-BRS only: False (default) / True / a `fbrs.inference.brs.guard.GuardConfig`: damp an L-BFGS
            solution that flips many pixels far from every click relative to the decoder's own answer.
        feedback_guard: with mask feedback: False (default) / True / a `sam_guard.FeedbackGuardConfig`: weigh
            the fed-back answer against alternatives (the decoder without the mask input, and/or the fed-back
            pass's multimask outputs) and keep an alternative where the fed-back answer violates more clicks
            or changes much of the mask far from the new click (`sam_guard`).
        zoom_in: False (default) / True / a `fbrs.inference.sam_zoom.SamZoomConfig`: from the second click
            on, decode in a crop around the object (one more encoder run whenever the crop changes).
        merge: False (default) / True / a `fbrs.inference.merge.MergeConfig`: from its start click on, keep
            only the changes of the mask that touch the new click (progressive merge, in the low-res frame:
            the merged logits are also the next mask input).
        output_switch: False (default) / True / a `fbrs.inference.sam_network.OutputSwitchConfig`: from the
            second click on, return a multimask output instead of the single-mask one where the IoU head rates
            it clearly better (needs a head trained for it: `fbrs train-sam` with `tune.iou_all_outputs`).

    Undo / redo / get_state / set_state / predict: see `fbrs.inference.interactive.InteractivePredictor`.
    """

    state_type = SamState

    def __init__(
        self,
        model: SamModel,
        insertion: str | None = None,
        mask_feedback: bool = True,
        multimask_first_click: bool = True,
        prob_threshold: float = 0.5,
        lbfgs_max_evaluations: int = 20,
        max_clicks: int | None = None,
        zoom_in: SamZoomConfig | bool | None = False,
        mode: str | None = None,
        guard: GuardConfig | bool | None = None,
        feedback_guard: FeedbackGuardConfig | bool | None = None,
        merge: MergeConfig | bool | None = False,
        output_switch: OutputSwitchConfig | bool | None = False,
    ) -> None:
        if not isinstance(model, SamModel):
            raise TypeError(f"SAM modes need a SamModel (fbrs.models.sam), got {type(model).__name__}")
        if insertion is not None and insertion not in SAM_INSERTIONS:
            raise ValueError(f"unknown SAM insertion {insertion!r}; choose from {', '.join(SAM_INSERTIONS)}")
        super().__init__()
        self.model = model
        self.mode = mode or ("SAM" if insertion is None else f"SAM f-BRS at {insertion}")
        self.insertion = insertion
        self.mask_feedback = mask_feedback
        self.multimask_first_click = multimask_first_click
        self.prob_threshold = prob_threshold
        self.max_clicks = max_clicks
        config = BRSConfig(
            lbfgs=LBFGSConfig(maxfun=lbfgs_max_evaluations, maxiter=2 * lbfgs_max_evaluations),
            prob_threshold=prob_threshold,
        )
        common = {"clicks_limit": None, "with_flip": False, "config": config}
        if insertion is None:
            self.refiner: Refiner = NoRefinement(**common)
        else:
            # After the transformer every logit depends on one feature pixel: the click loss's gradient needs
            # the click squares only (the image embedding feeds attention: whole map there).
            self.refiner = FeatureBRS(
                insertion, guard=resolve_guard(guard, False), support_gradient=insertion != "image_embedding",
                **common,
            )
        self.feedback_guard = resolve_feedback_guard(feedback_guard, False)
        self.zoom = config_from_option(zoom_in, False, SamZoomConfig, "zoom_in")
        self.merge = config_from_option(merge, False, MergeConfig, "merge")
        self.output_switch = config_from_option(output_switch, False, OutputSwitchConfig, "output_switch")
        self.last_feedback_choice: str | None = None  # "fed" or the sam_guard rule that chose an alternative
        self.last_zoom_fallback = False  # Zoom-In's `agreement`: the last answer is the whole image's
        self._image_frame: SamFrame | None = None  # the whole image's embedding
        self._frame: SamFrame | None = None  # where the last click was decoded (a crop with Zoom-In)
        self._low_res: torch.Tensor | None = None  # (1, 1, L, L) logits of the last click: the next mask input
        self._crop_agreed = False  # an answer in the current crop has passed the agreement check

    # -- InteractivePredictor hooks ---------------------------------------------------------------
    def _load_image(self, image: np.ndarray) -> None:
        # Runs the image encoder unless the model has this image's embedding cached.
        self._image_frame = SamFrame(self.model.embed(image))

    def _reset_model(self) -> None:
        self._low_res = None
        self._frame = self._image_frame
        self._crop_agreed = False
        self.refiner.reset()

    def _model_state(self) -> dict[str, Any]:
        return {"low_res": self._low_res, "frame": self._frame, "refiner": self.refiner.get_state(),
                "crop_agreed": self._crop_agreed}

    def _restore_model_state(self, state: SamState) -> None:
        self._low_res = state.low_res
        # A state from before frames were stored has its low-res logits in the whole image's frame.
        self._frame = state.frame or self._image_frame
        self.refiner.set_state(state.refiner)
        self._crop_agreed = state.crop_agreed

    def _compute(self) -> tuple[np.ndarray, None]:
        probabilities, self._low_res = self._predict()
        return probabilities, None

    # -- internals --------------------------------------------------------------------------------
    def _predict(self) -> tuple[np.ndarray, torch.Tensor]:
        """-> ((H, W) float32 probabilities, (1, 1, L, L) low-res logits in `self._frame`) of the current clicks."""
        config = self.model.config
        size = config.low_res_size
        frame, mask_prompt = self._frame_for_click()
        embedding = frame.embedding
        grid = torch.zeros((1, 1, size, size), device=embedding.embedding.device)
        clicks = clicks_in_frame(frame, self._clicks, config.input_size, size)
        previous = mask_prompt
        if not self.mask_feedback:
            mask_prompt = None
        network = SamNetwork(
            self.model.decoder, embedding, mask_prompt, self.multimask_first_click, self.output_switch
        )
        low_res = self.refiner.predict(network, grid, [clicks], image_changed=frame is not self._frame).detach()
        self.last_feedback_choice = None
        if self.feedback_guard is not None and mask_prompt is not None:
            alternatives = alternative_answers(
                self.feedback_guard, self.model.decoder, embedding, mask_prompt, self.multimask_first_click, grid,
                clicks,
            )
            self.last_feedback_choice, chosen = choose_answer(
                self.feedback_guard, Answer(low_res, network.last_iou), alternatives, mask_prompt, clicks
            )
            low_res = chosen.logits
        # (With Zoom-In a negative click outside the crop is left out of `clicks`: then there is nothing to
        # merge around in this frame.)
        if (self.merge is not None and previous is not None and len(self._clicks) >= self.merge.start_click
                and len(clicks) == len(self._clicks)):
            merged = progressive_merge(
                previous[0, 0].cpu().numpy(), low_res[0, 0].cpu().numpy(), clicks[-1], 0.0, self.merge
            )
            low_res = torch.from_numpy(merged)[None, None].to(low_res.device)
        self.last_zoom_fallback = False
        new_frame = frame is not self._frame
        self._frame = frame
        if new_frame:
            self._crop_agreed = False
        if self._checks_agreement(frame, new_frame):
            return self._agreeing_answer(frame, low_res, previous, grid)
        return frame_probabilities(frame, low_res, self.image_size, config.input_size), low_res

    def _checks_agreement(self, frame: SamFrame, new_frame: bool) -> bool:
        """Whether this click's answer in `frame` is checked against the whole image's
        (`SamZoomConfig.agreement_checks`)."""
        if self.zoom is None or self.zoom.agreement is None or frame.roi is None:
            return False
        checks = self.zoom.agreement_checks
        return checks == "every" or new_frame or (checks == "until_agreed" and not self._crop_agreed)

    def _agreeing_answer(
        self, frame: SamFrame, low_res: torch.Tensor, previous: torch.Tensor | None, grid: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor]:
        """(probabilities, low-res logits) of the crop's (1, 1, L, L) answer, or of the decoder's plain answer on
        the whole image moved into the crop where the two masks overlap by less than `zoom.agreement` (IoU in
        image pixels)."""
        config = self.model.config
        whole = self._image_frame
        mask_prompt = None
        if previous is not None and self.mask_feedback:
            mask_prompt = resample_low_res(previous, frame, whole, config.input_size, config.low_res_size)
        clicks = clicks_in_frame(whole, self._clicks, config.input_size, config.low_res_size)
        network = SamNetwork(self.model.decoder, whole.embedding, mask_prompt, self.multimask_first_click,
                             self.output_switch)
        with torch.no_grad():
            answer = network(grid, points_tensor([clicks]))
        threshold = self.prob_threshold
        crop_probabilities = frame_probabilities(frame, low_res, self.image_size, config.input_size)
        whole_mask = frame_probabilities(whole, answer, self.image_size, config.input_size) > threshold
        if mask_iou(crop_probabilities > threshold, whole_mask) >= self.zoom.agreement:
            self._crop_agreed = True
            return crop_probabilities, low_res
        self.last_zoom_fallback = True
        moved = resample_low_res(answer, whole, frame, config.input_size, config.low_res_size)
        return frame_probabilities(frame, moved, self.image_size, config.input_size), moved

    def _frame_for_click(self) -> tuple[SamFrame, torch.Tensor | None]:
        """The frame to decode the current clicks in, and the previous click's logits moved into it."""
        frame, low_res = self._frame, self._low_res
        if self.zoom is None:
            return frame, low_res
        roi = next_roi(self.zoom, self._probabilities, self._clicks, frame.roi)
        if roi == frame.roi:
            return frame, low_res
        if roi is None:
            new = self._image_frame
        else:
            new = SamFrame(self.model.embed(crop_of(self._image, roi), cache=False), roi)
        if low_res is not None:
            config = self.model.config
            low_res = resample_low_res(low_res, frame, new, config.input_size, config.low_res_size)
        return new, low_res
