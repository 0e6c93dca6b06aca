"""The public predictor: one image, one object, clicks in, probability map out."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.inference.backends import Backend, backend_from_option
from fbrs.inference.brs.guard import GuardConfig
from fbrs.inference.brs.objective import BRSConfig, LBFGSConfig
from fbrs.inference.brs.refiners import Refiner
from fbrs.inference.clicks import Click
from fbrs.inference.interactive import InteractivePredictor, PredictorState
from fbrs.inference.modes import MODES
from fbrs.inference.normalise import normalise_tensor
from fbrs.inference.packed import UpsampledMap, upsample_into
from fbrs.inference.zoom_in import ZoomIn, ZoomInConfig
from fbrs.models.interactive_model import InteractiveModel

_UNSET: Any = object()
_SAME_AS_PROBABILITIES = "same-as-probabilities"

# The caller's model keeps its mode. A click runs it in eval mode (BatchNorm on its running statistics, as
# predictions need) and gives it back as it was, each module's flag restored, instead of switching it for
# good: a training loop that builds a Predictor to look at its model would otherwise go on training with
# frozen BatchNorm statistics. Refusing a model in training mode was the other choice, rejected because
# build_model() returns one and the app, the tests and the README's first example pass it straight in.
# Predictors on several threads may share one model (fbrs serve runs different images concurrently): the
# switch is counted per model, so the model goes back to training mode only when the last click on it ends,
# never under another thread's prediction. A lock and a weak dictionary, empty whenever no click runs.
_MODE_LOCK = threading.Lock()
_EVAL_USERS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, list[tuple[torch.nn.Module, bool]]]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` in eval mode inside the block; afterwards every module has the mode it had before."""
    with _MODE_LOCK:
        users, modes = _EVAL_USERS.get(model, (0, []))
        if users == 0:
            modes = [(module, module.training) for module in model.modules() if module.training]
            if modes:
                model.eval()
        _EVAL_USERS[model] = (users + 1, modes)
    try:
        yield
    finally:
        with _MODE_LOCK:
            users, modes = _EVAL_USERS.pop(model)
            if users > 1:
                _EVAL_USERS[model] = (users - 1, modes)
            else:
                for module, training in modes:
                    module.training = training


@dataclass(frozen=True, eq=False, repr=False)
class LearnedState(PredictorState):
    """A `Predictor`'s state: `PredictorState` plus the refiner's (L-BFGS variables, cached features) and
    Zoom-In's (crop, previous map) state dicts."""

    refiner: dict[str, Any]
    zoom_in: dict[str, Any] | None


class Predictor(InteractivePredictor):
    """Interactive segmentation of one object at a time.

    >>> predictor = Predictor(model, mode="f-BRS-B")
    >>> predictor.set_image(rgb)                       # (H, W, 3) uint8
    >>> probs = predictor.add_click(120, 80, True)    # (y, x) = (row, column); (H, W) float32 in [0, 1]
    >>> mask = probs > predictor.prob_threshold

    Args:
        model: an InteractiveModel (see `fbrs.load_model`, `fbrs.models.load_default_model`).
        mode: "NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B" or "f-BRS-C" (the paper's), or
            "f-BRS-A-guarded", "f-BRS-B-guarded", "f-BRS-C-guarded" (the same with `guard` on).
        zoom_in: run the network on a crop around the object from the 2nd click on (Zoom-In).
        zoom_in_target_size: longer side of the crop fed to the network (400; the original used 600 on DAVIS).
        zoom_in_skip_clicks: clicks before Zoom-In starts: 1 as the original code, 2 as the paper's text.
        with_flip: average the logits with those of the horizontally flipped input.
        prob_threshold: mask threshold used by the BRS early exits and `mask` (0.49 as the original).
        clicks_limit: only the first N clicks enter the network (later ones only steer BRS); the
            default is the original's: 8 for f-BRS, 5 for RGB/DistMap-BRS (the paper states 4), none for NoBRS.
        lbfgs_max_evaluations: L-BFGS function evaluations per click (20).
        max_clicks: refuse clicks beyond this many (None: no limit).
        max_image_side: when the network would see the whole image (no Zoom-In crop: the first click, or
            zoom_in=False) and its longer side exceeds this, resize it to this longer side first and the
            probabilities back (bilinear, as Zoom-In does for crops). Bounds time and memory on huge images
            (a 4000x3000 photo needs over 6 GB without it). None (default) = the original behaviour.
        backend: "torch" (default) or "onnx": run the feed-forward part (NoBRS: the whole pass; f-BRS: the
            network up to the insertion point) in ONNX Runtime from the files of `fbrs export-onnx`; the
            layers BRS differentiates stay in torch. An `fbrs.onnx.OnnxBackend` (or any
            `fbrs.inference.backends.Backend`) may be given instead (to share its sessions between
            predictors). Not for RGB-BRS / DistMap-BRS.
        onnx_files: with backend="onnx", the .onnx file(s) exported from this very model.
        windowed_gradient: f-BRS only. False (default): every L-BFGS gradient is the whole-map backward
            pass, the original code's computation, so a trajectory is the original's up to the CPU's own
            rounding (bit-identical on the same machine, measured in benchmarks/windowed_gradient_ab.py).
            True: the gradient runs on small windows around the clicks (fbrs.inference.brs.windows),
            equal in exact arithmetic and ~1.3x faster per click, but summed in another order, which L-BFGS
            can amplify into another trajectory after a few clicks. The app uses True (latency); the
            evaluation protocol and the paper's goldens use False.
        guard: f-BRS only. None: the mode's default (off for the paper's modes, on for "-guarded");
            True / False, or a `fbrs.inference.brs.guard.GuardConfig`: damp an L-BFGS solution that flips
            many pixels far from every click relative to the network's own answer (`brs.guard`).

    The model's mode is left as the caller set it: each click runs it in eval mode and restores it.
    Undo / redo / get_state / set_state / predict: see `fbrs.inference.interactive.InteractivePredictor`.
    """

    state_type = LearnedState

    def __init__(
        self,
        model: InteractiveModel,
        mode: str = "f-BRS-B",
        zoom_in: bool = True,
        zoom_in_target_size: int = 400,
        zoom_in_skip_clicks: int = 1,
        with_flip: bool = True,
        prob_threshold: float = 0.49,
        clicks_limit: int | None = _UNSET,
        lbfgs_max_evaluations: int = 20,
        max_clicks: int | None = None,
        device: str | torch.device | None = None,
        max_image_side: int | None = None,
        backend: str | Backend = "torch",
        onnx_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        windowed_gradient: bool = False,
        guard: GuardConfig | bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
        spec = MODES[mode]
        super().__init__()
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.mode = mode
        self.prob_threshold = prob_threshold
        self.with_flip = with_flip
        self.max_clicks = max_clicks
        if max_image_side is not None and max_image_side < 16:
            raise ValueError(f"max_image_side must be at least 16 pixels, got {max_image_side}")
        self.max_image_side = max_image_side
        self._small_image: torch.Tensor | None = None  # the image resized to max_image_side, made on demand
        self.clicks_limit = spec.clicks_limit if clicks_limit is _UNSET else clicks_limit
        self.zoom_in = ZoomIn(ZoomInConfig(zoom_in_target_size, zoom_in_skip_clicks)) if zoom_in else None
        # What the refiner calls: the model itself, or a stand-in running its feed-forward part in ONNX Runtime.
        runner = backend_from_option(backend, onnx_files)
        self._network: Any = runner.network(self.model, spec, self.device)
        self.backend: str = runner.name
        config = BRSConfig(
            lbfgs=LBFGSConfig(maxfun=lbfgs_max_evaluations, maxiter=2 * lbfgs_max_evaluations),
            prob_threshold=prob_threshold,
        )
        self.refiner: Refiner = spec.build_refiner(config, self.clicks_limit, with_flip, windowed_gradient, guard)
        self._image_tensor: torch.Tensor | None = None

    def oracle_refine(self, gt_mask: np.ndarray, ignore_mask: np.ndarray | None = None) -> np.ndarray:
        """f-BRS oracle (paper, Appendix B): continue optimising towards the ground truth (H, W) bool mask.

        Returns the (H, W) float32 probabilities; the interactive state is unchanged. f-BRS modes only."""
        from fbrs.inference.oracle import oracle_refine

        with eval_mode(self.model):
            return oracle_refine(self, gt_mask, ignore_mask)

    # -- InteractivePredictor hooks ---------------------------------------------------------------
    def _load_image(self, image: np.ndarray) -> None:
        # (1, 3, H, W) uint8 view of the image: normalised per crop, see normalise_tensor.
        self._image_tensor = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device)
        self._small_image = None

    def _inference(self) -> Any:
        return eval_mode(self.model)

    def _reset_model(self) -> None:
        self.refiner.reset()
        if self.zoom_in is not None:
            self.zoom_in.reset()

    def _model_state(self) -> dict[str, Any]:
        zoom_state = None if self.zoom_in is None else self.zoom_in.get_state()
        if (
            zoom_state is not None
            and zoom_state["previous_probs"] is not None
            and self._probabilities is not None
            and np.may_share_memory(zoom_state["previous_probs"], self._probabilities)
        ):
            # Zoom-In keeps the very map the predictor returned: store it once.
            zoom_state = {**zoom_state, "previous_probs": _SAME_AS_PROBABILITIES}
        return {"refiner": self.refiner.get_state(), "zoom_in": zoom_state}

    def _restore_model_state(self, state: LearnedState) -> None:
        self.refiner.set_state(state.refiner)
        if self.zoom_in is not None and state.zoom_in is not None:
            zoom_state = state.zoom_in
            if isinstance(zoom_state["previous_probs"], str):  # _SAME_AS_PROBABILITIES
                zoom_state = {**zoom_state, "previous_probs": self._probabilities}
            self.zoom_in.set_state(zoom_state)
        elif self.zoom_in is not None:
            self.zoom_in.reset()

    def _compute(self) -> tuple[np.ndarray, UpsampledMap | None]:
        return self._predict()

    def _predict(self) -> tuple[np.ndarray, UpsampledMap | None]:
        """The (H, W) float32 map of the current clicks, and its UpsampledMap when that is smaller."""
        image = self._image_tensor
        clicks = self._clicks
        image_changed = False
        if self.zoom_in is not None:
            image, clicks = self.zoom_in.transform(image, clicks)
            image_changed = self.zoom_in.image_changed
        whole_image = self.zoom_in is None or not self.zoom_in.applied
        resized = whole_image and self.max_image_side is not None and max(self.image_size) > self.max_image_side
        if resized:
            image, clicks = self._resized_input(clicks)
        image = normalise_tensor(image)
        clicks_lists = [clicks]
        if self.with_flip:
            width = image.shape[3]
            image = torch.cat([image, torch.flip(image, dims=[3])], dim=0)
            clicks_lists.append([click.moved(click.y, width - click.x - 1) for click in clicks])
        network = self._network
        # -- issue 18: a prev_mask_input model also takes the previous probabilities (mapped like the image)
        if self.model.config.prev_mask_input:
            from fbrs.models.interactive_model import previous_mask_network

            roi = self.zoom_in.roi if self.zoom_in is not None and self.zoom_in.applied else None
            network = previous_mask_network(network, self._probabilities, roi, image.shape[2:], self.with_flip)
        # -- end issue 18
        logits = self.refiner.predict(network, image, clicks_lists, image_changed)
        with torch.no_grad():
            if self.with_flip:
                # The original averages the flips on logits, before the sigmoid.
                logits = 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3]))
            network_probs = probs = torch.sigmoid(logits)
            if resized:
                probs = upsample_into(probs, self.image_size)
            if self.zoom_in is not None:
                probs = self.zoom_in.inverse(probs, self.image_size)
        full = probs[0, 0].cpu().numpy().astype(np.float32, copy=False)
        stored = None
        if network_probs.numel() < full.size and (resized or (self.zoom_in is not None and self.zoom_in.applied)):
            stored = UpsampledMap(self.image_size, None if resized else self.zoom_in.roi, network_probs)
        return full, stored

    def _resized_input(self, clicks: Sequence[Click]) -> tuple[torch.Tensor, list[Click]]:
        """The whole image with its longer side = max_image_side, and the clicks mapped onto it (the
        mapping Zoom-In uses for its crops)."""
        height, width = self.image_size
        if self._small_image is None:
            scale = self.max_image_side / max(height, width)
            size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
            self._small_image = F.interpolate(
                normalise_tensor(self._image_tensor), size=size, mode="bilinear", align_corners=True
            )
        small_height, small_width = self._small_image.shape[2:]
        moved = [c.moved(small_height * c.y / height, small_width * c.x / width) for c in clicks]
        return self._small_image, moved
