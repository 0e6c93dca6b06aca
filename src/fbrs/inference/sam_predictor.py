"""The SAM family's predictor: the public Predictor surface over a SamModel, with FeatureBRS on top.

Per image the encoder runs once (`SamModel.embed`, cached across predictors and objects); per click the
decoder runs on all clicks as points, plus (mask feedback) the previous click's low-res logits as SAM's
mask input. f-BRS modes optimise a per-channel scale and bias at an insertion point of the decoder with
the project's L-BFGS objective (`fbrs.inference.brs`), re-running only what follows that point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fbrs.errors import InvalidImageError
from fbrs.images import as_rgb_uint8
from fbrs.inference.brs.guard import GuardConfig, resolve_guard
from fbrs.inference.brs.objective import BRSConfig, LBFGSConfig
from fbrs.inference.brs.refiners import FeatureBRS, NoRefinement, Refiner
from fbrs.inference.clicks import Click, checked_click, click_sequence, clicks_are_prefix
from fbrs.inference.sam_network import SamNetwork
from fbrs.models.sam.decoder import SAM_INSERTIONS
from fbrs.models.sam.frame import to_low_res, upscale_logits
from fbrs.models.sam.image_encoder import ImageEmbedding
from fbrs.models.sam.model import SamModel


class SamPredictor:
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
        zoom_in: accepted so that callers which pass it to every mode work; Zoom-In is not implemented for
            this family, the whole image is always encoded.
    """

    def __init__(
        self,
        model: SamModel,
        insertion: str | None = None,
        mask_feedback: bool = True,
        multimask_first_click: bool = True,
        prob_threshold: float = 0.5,
        lbfgs_max_evaluations: int = 20,
        max_clicks: int | None = None,
        zoom_in: bool = False,
        mode: str | None = None,
        guard: GuardConfig | bool | None = None,
    ) -> None:
        if not isinstance(model, SamModel):
            raise TypeError(f"SAM modes need a SamModel (fbrs.models.sam), got {type(model).__name__}")
        if insertion is not None and insertion not in SAM_INSERTIONS:
            raise ValueError(f"unknown SAM insertion {insertion!r}; choose from {', '.join(SAM_INSERTIONS)}")
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
            self.refiner = FeatureBRS(insertion, guard=resolve_guard(guard, False), **common)
        self._image: np.ndarray | None = None
        self._embedding: ImageEmbedding | None = None
        self._clicks: list[Click] = []
        self._probabilities: np.ndarray | None = None
        self._low_res: torch.Tensor | None = None  # (1, 1, L, L) logits of the last click: the next mask input
        self._history: list[dict[str, Any]] = []

    # -- public surface ---------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        """image: (H, W, 3) uint8 RGB; grayscale, RGBA and 16-bit are converted, else InvalidImageError.

        Runs the image encoder unless the model has this image's embedding cached. Forgets all clicks."""
        self._image = as_rgb_uint8(image)
        self._embedding = self.model.embed(self._image)
        self.reset()

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the current image."""
        self._require_image()
        return self._image.shape[0], self._image.shape[1]

    @property
    def clicks(self) -> list[Click]:
        return list(self._clicks)

    @property
    def probabilities(self) -> np.ndarray | None:
        """The last probability map (H, W) float32, or None before the first click."""
        return self._probabilities

    @property
    def mask(self) -> np.ndarray | None:
        """The last mask (H, W) bool = probabilities > prob_threshold, or None before the first click."""
        return None if self._probabilities is None else self._probabilities > self.prob_threshold

    def add_click(self, y: float, x: float, positive: bool) -> np.ndarray:
        """Add a click at (y, x) = (row, column) in image pixels; returns the (H, W) float32 probabilities
        (read-only: the undo history shares it)."""
        click = checked_click(y, x, positive, self.image_size, len(self._clicks), self.max_clicks)
        self._history.append(self.get_state())
        self._clicks.append(click)
        probabilities, self._low_res = self._predict()
        probabilities.flags.writeable = False
        self._probabilities = probabilities
        return probabilities

    def undo(self) -> np.ndarray | None:
        """Remove the last click, restoring the exact state before it. Returns the probabilities then."""
        if not self._history:
            return self._probabilities
        self.set_state(self._history.pop(), keep_history=True)
        return self._probabilities

    def reset(self) -> None:
        """Forget all clicks of the current object (keeps the image and its embedding)."""
        self._clicks = []
        self._probabilities = None
        self._low_res = None
        self._history = []
        self.refiner.reset()

    def get_state(self) -> dict[str, Any]:
        """Everything that determines future predictions; `set_state` restores it exactly (arrays and
        tensors are shared, never modified in place)."""
        return {
            "clicks": list(self._clicks),
            "probabilities": self._probabilities,
            "low_res": self._low_res,
            "refiner": self.refiner.get_state(),
            "history_length": len(self._history),
        }

    def set_state(self, state: dict[str, Any], keep_history: bool = False) -> None:
        self._require_image()
        self._clicks = list(state["clicks"])
        self._probabilities = state["probabilities"]
        self._low_res = state["low_res"]
        self.refiner.set_state(state["refiner"])
        if not keep_history:
            self._history = self._history[: state.get("history_length", 0)]

    def predict(
        self,
        points: np.ndarray | Sequence[Sequence[float]],
        labels: np.ndarray | Sequence[int | bool],
        prev_state: dict[str, Any] | None = None,
        return_state: bool = False,
    ):
        """Stateless prediction for a whole click sequence.

        points: (N, 2) (y, x) in image pixels, in click order; labels: (N,) 1/True positive, 0/False negative.
        prev_state: a state from `get_state()`/an earlier `predict(..., return_state=True)` whose clicks are
        a prefix of `points`: only the new clicks are computed. The predictor's own state is unchanged.
        Returns the (H, W) float32 probabilities, or (probabilities, state) with return_state.
        """
        points, labels = click_sequence(points, labels)
        saved = self.get_state()
        saved_history = list(self._history)
        try:
            start = 0
            if prev_state is not None and clicks_are_prefix(prev_state["clicks"], points, labels):
                self.set_state(prev_state)
                start = len(prev_state["clicks"])
            else:
                self.reset()
            for (y, x), label in zip(points[start:], labels[start:], strict=True):
                self.add_click(y, x, bool(label))
            result = self._probabilities
            state = self.get_state()
        finally:
            self.set_state(saved, keep_history=True)
            self._history = saved_history
        return (result, state) if return_state else result

    # -- internals --------------------------------------------------------------------------------
    def _require_image(self) -> None:
        if self._image is None:
            raise InvalidImageError("no image set: call set_image(image) first")

    def _predict(self) -> tuple[np.ndarray, torch.Tensor]:
        """-> ((H, W) float32 probabilities, (1, 1, L, L) low-res logits) of the current clicks."""
        embedding = self._embedding
        config = self.model.config
        size = config.low_res_size
        frame = torch.zeros((1, 1, size, size), device=embedding.embedding.device)
        clicks = [
            click.moved(*to_low_res(click.y, click.x, embedding.scale, config.input_size, size))
            for click in self._clicks
        ]
        mask_prompt = self._low_res if self.mask_feedback else None
        network = SamNetwork(self.model.decoder, embedding, mask_prompt, self.multimask_first_click)
        low_res = self.refiner.predict(network, frame, [clicks], image_changed=False).detach()
        with torch.no_grad():
            logits = upscale_logits(low_res, embedding.resized_size, embedding.image_size, config.input_size)
            probabilities = torch.sigmoid(logits)[0, 0].cpu().numpy().astype(np.float32, copy=False)
        return probabilities, low_res

