"""Refiners: what happens between the clicks and the logits.

* `NoRefinement`: one forward pass (NoBRS).
* `InputBRS`: optimise an additive correction of the network input - the normalised image (RGB-BRS)
  or the distance maps (DistMap-BRS); every L-BFGS evaluation runs the whole network.
* `FeatureBRS`: optimise a per-channel scale and bias of intermediate features (f-BRS-A/B/C). The
  network runs once up to the insertion point (cached); L-BFGS evaluations re-run only what follows.

All take the network-input batch (the image and, with flip TTA, its mirror) and return logits of the
same spatial size. Their state (`get_state`/`set_state`) is what exact undo needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fbrs.inference.brs.guard import GuardConfig, guarded_solution
from fbrs.inference.brs.objective import (
    BRSConfig,
    ClickObjective,
    SupportClickObjective,
    WindowedClickObjective,
    minimise,
)
from fbrs.inference.brs.windows import loss_support, plan_windows
from fbrs.inference.clicks import Click, click_squares, points_tensor
from fbrs.models.interactive_model import InteractiveModel


class Refiner:
    """Base class: plain forward pass, no optimisation."""

    def __init__(self, clicks_limit: int | None = None, with_flip: bool = True, config: BRSConfig | None = None):
        self.clicks_limit = clicks_limit
        self.with_flip = with_flip
        self.config = config or BRSConfig()
        self.last_loss_values: list[float] = []

    def reset(self) -> None:
        self.last_loss_values = []

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def predict(
        self,
        model: InteractiveModel,
        image: torch.Tensor,
        clicks_lists: Sequence[Sequence[Click]],
        image_changed: bool,
    ) -> torch.Tensor:
        """image (B,3,h,w) normalised, clicks_lists: one list per batch item in its pixels -> (B,1,h,w)."""
        with torch.no_grad():
            return model(image, points_tensor(clicks_lists, self.clicks_limit))

    def _batch_size(self, image: torch.Tensor) -> int:
        return image.shape[0] // 2 if self.with_flip else image.shape[0]

    def _optimise(self, objective: ClickObjective, x0: np.ndarray, num_clicks: int) -> np.ndarray:
        if num_clicks > self.config.optimize_after_n_clicks:
            x0 = minimise(objective, x0, self.config.lbfgs)
        self.last_loss_values = objective.loss_values
        return x0


class NoRefinement(Refiner):
    pass


class InputBRS(Refiner):
    """RGB-BRS (target "rgb") or DistMap-BRS (target "distance_maps")."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if target not in ("rgb", "distance_maps"):
            raise ValueError(f"InputBRS target must be 'rgb' or 'distance_maps', got {target!r}")
        self.target = target
        self.correction: np.ndarray | None = None  # (B, 3 or 2, h, w), reset when the zoomed image changes

    def reset(self) -> None:
        super().reset()
        self.correction = None

    def get_state(self) -> dict[str, Any]:
        return {"correction": None if self.correction is None else self.correction.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.correction = None if state["correction"] is None else state["correction"].copy()

    def predict(self, model, image, clicks_lists, image_changed):
        height, width = image.shape[2:]
        points = points_tensor(clicks_lists, self.clicks_limit)
        positive, negative = click_squares(clicks_lists, height, width)
        if self.correction is None or image_changed:
            channels = 3 if self.target == "rgb" else 2
            self.correction = np.zeros((self._batch_size(image), channels, height, width), dtype=np.float32)
        shape = self.correction.shape
        with torch.no_grad():
            # The maps depend only on the clicks, never on the correction: compute them once per click.
            maps = model.dist_maps(image, points)

        def unpack(x: torch.Tensor):
            correction = x.view(shape)
            if self.with_flip:
                correction = torch.cat([correction, torch.flip(correction, dims=[3])], dim=0)
            return (correction,), self.config.reg_weight * torch.sum(correction**2)

        def logits_fn(correction: torch.Tensor) -> torch.Tensor:
            if self.target == "rgb":
                return model.forward_with_maps(image + correction, maps)
            return model.forward_with_maps(image, maps + correction)

        objective = ClickObjective(self.config, logits_fn, unpack, positive, negative)
        x = self._optimise(objective, self.correction.ravel(), len(clicks_lists[0]))
        self.correction = x.reshape(shape)
        if objective.best_logits is not None:
            return objective.best_logits
        with torch.no_grad():
            (correction,), _ = unpack(torch.from_numpy(self.correction))
            return logits_fn(correction)


class FeatureBRS(Refiner):
    """f-BRS: `features * (1 + s) + b` at `insertion` (after_backbone = A, after_aspp = B, after_decoder = C).

    windowed_gradient: take the gradient of each L-BFGS evaluation on small windows around the clicks
    (see `brs.windows`) instead of the whole maps. The loss, the early exits and the returned logits
    still come from a whole-map forward pass, so results agree with the whole-map gradient up to float
    summation order, which L-BFGS may amplify. False (default) is the original's whole-map backward pass.
    guard: None (default, the original) or a `brs.guard.GuardConfig`: a solution that flips many pixels far
    from every click relative to the network's own answer is damped towards that answer (`brs.guard`).
    support_gradient: take the gradient through the click squares only, with the model's
    `support_logits_from(insertion, features, context, support, scale, bias)` (networks whose logits are
    per-pixel after the insertion point: the SAM decoder after its transformer;
    `brs.objective.SupportClickObjective`). Same loss and gradient up to float
    summation order; the DeepLab models have no such method.
    """

    def __init__(
        self, insertion: str, reg_bias_weight: float = 10.0, windowed_gradient: bool = False,
        guard: GuardConfig | None = None, support_gradient: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if windowed_gradient and support_gradient:
            raise ValueError("FeatureBRS takes windowed_gradient or support_gradient, not both")
        self.insertion = insertion
        self.support_gradient = support_gradient
        self.guard = guard
        self.last_guard_fraction: float | None = None  # t of the last guarded click (1: kept, 0: network's own)
        self.reg_bias_weight = reg_bias_weight
        self.windowed_gradient = windowed_gradient
        self.variables: np.ndarray | None = None  # [s (B*C), b (B*C)]; kept across clicks and Zoom-In crops
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # The last click's answer, for GuardConfig.previous_far_change.
        self._previous_logits: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.variables = None
        self._cache = None
        self.last_guard_fraction = None
        self._previous_logits = None

    def get_state(self) -> dict[str, Any]:
        return {
            "variables": None if self.variables is None else self.variables.copy(),
            "cache": self._cache,  # tensors are never modified in place: sharing them is safe
            "guard_fraction": self.last_guard_fraction,  # GuardConfig.insist looks at the previous click's
            "previous_logits": self._previous_logits,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.variables = None if state["variables"] is None else state["variables"].copy()
        self._cache = state["cache"]
        self.last_guard_fraction = state.get("guard_fraction")
        self._previous_logits = state.get("previous_logits")

    def predict(self, model, image, clicks_lists, image_changed):
        height, width = image.shape[2:]
        batch = self._batch_size(image)
        channels = model.insertion_channels(self.insertion)
        num_clicks = len(clicks_lists[0])
        positive, negative = click_squares(clicks_lists, height, width)
        if self.variables is None or self.variables.size // (2 * channels) != batch:
            self.variables = np.zeros(batch * 2 * channels, dtype=np.float32)
        limit = self.clicks_limit if self.clicks_limit is not None else num_clicks
        if num_clicks <= limit or image_changed or self._cache is None:
            # Past the limit the network input is frozen (only the loss sees new clicks): keep the cache.
            with torch.no_grad():
                self._cache = model.features_at(self.insertion, image, points_tensor(clicks_lists, self.clicks_limit))
        features, skip = self._cache
        insertion = self.insertion

        def unpack(x: torch.Tensor):
            scale, bias = torch.chunk(x, 2, dim=0)
            regulariser = self.config.reg_weight * (torch.sum(scale**2) + self.reg_bias_weight * torch.sum(bias**2))
            return (1 + scale, bias), regulariser

        def per_item(scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """flat variables -> (B, C, 1, 1) scale and bias; the flipped copy shares the variables."""
            scale, bias = scale.view(batch, -1, 1, 1), bias.view(batch, -1, 1, 1)
            if self.with_flip:
                scale, bias = scale.repeat(2, 1, 1, 1), bias.repeat(2, 1, 1, 1)
            return scale, bias

        def logits_fn(scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            scale, bias = per_item(scale, bias)
            return model.logits_from(insertion, features * scale + bias, skip, (height, width))

        radius = model.local_radius(insertion) if self.windowed_gradient else None
        if self.support_gradient:
            support = (positive + negative) > 0

            def support_fn(scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
                scale, bias = per_item(scale, bias)
                return model.support_logits_from(insertion, features, skip, support, scale, bias)

            objective = SupportClickObjective(self.config, logits_fn, support_fn, unpack, positive, negative)
        elif radius is None:
            objective = ClickObjective(self.config, logits_fn, unpack, positive, negative)
        else:

            def start_fn(scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
                scale, bias = per_item(scale, bias)
                return model.nonlocal_part(insertion, features * scale + bias, skip)

            # The local part runs at the resolution of the low-level skip features (stride 4).
            low_size = tuple((skip if skip is not None else features).shape[2:])
            objective = WindowedClickObjective(
                self.config, start_fn, lambda x: model.local_logits(insertion, x), (height, width),
                lambda: plan_windows(loss_support(positive, negative, low_size), radius),
                unpack, positive, negative,
            )
        self.variables = self._optimise(objective, self.variables, num_clicks)
        previous_fraction, self.last_guard_fraction = self.last_guard_fraction, None
        if self.guard is not None and objective.best_logits is not None and objective.best_x is not None:

            def logits_at(x: np.ndarray) -> torch.Tensor:
                with torch.no_grad():
                    return logits_fn(*unpack(torch.from_numpy(x))[0])

            previous = self._previous_logits
            if image_changed or previous is None or previous.shape != objective.best_logits.shape:
                previous = None  # another frame (a new Zoom-In crop): nothing to compare with
            variables, logits, self.last_guard_fraction = guarded_solution(
                self.guard, logits_at, objective.best_x, objective.best_logits, clicks_lists,
                self.config.prob_threshold, previous_fraction, previous,
            )
            if self.last_guard_fraction < 1.0:  # else keep the original's state: the final x of L-BFGS
                self.variables = variables
        elif objective.best_logits is not None:
            logits = objective.best_logits
        else:
            with torch.no_grad():
                variables, _ = unpack(torch.from_numpy(self.variables))
                logits = logits_fn(*variables)
        if self.guard is not None and self.guard.previous_far_change is not None:
            self._previous_logits = logits.detach()
        return logits
