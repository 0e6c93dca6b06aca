"""The function L-BFGS minimises, and the L-BFGS call itself (scipy's L-BFGS-B, as the original)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import fmin_l_bfgs_b

from fbrs.inference.brs.loss import batch_mask_iou, click_mask_loss
from fbrs.inference.brs.windows import Windows
from fbrs.models.deeplab import upsample_to


@dataclass(frozen=True)
class LBFGSConfig:
    """scipy fmin_l_bfgs_b parameters of the original evaluation (maxiter = 2 * maxfun)."""

    m: int = 20
    factr: float = 0.0
    pgtol: float = 1e-8
    maxfun: int = 20
    maxiter: int = 40


@dataclass(frozen=True)
class BRSConfig:
    lbfgs: LBFGSConfig = LBFGSConfig()
    prob_threshold: float = 0.49
    reg_weight: float = 1e-3
    min_iou_diff: float = 0.01  # stop when the mask changes less than this between evaluations
    optimize_after_n_clicks: int = 1


class ClickObjective:
    """f(x) and its gradient for one click's optimisation.

    `logits_fn(*variables)` maps the unpacked optimisation variables to logits; `unpack(x)` turns the
    flat float tensor x into (variables, regulariser). The lowest-loss logits seen are kept in
    `best_logits`: the predictor returns them, not necessarily those at the final x.
    Returning a zero gradient makes L-BFGS stop; that is how the two early exits work.
    """

    def __init__(
        self,
        config: BRSConfig,
        logits_fn: Callable[..., torch.Tensor] | None,
        unpack: Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
        positive: torch.Tensor,
        negative: torch.Tensor,
    ) -> None:
        self.config = config
        self.logits_fn = logits_fn
        self.unpack = unpack
        self.positive = positive
        self.negative = negative
        self.best_logits: torch.Tensor | None = None
        self.best_x: np.ndarray | None = None  # the variables of best_logits (for the guard, brs.guard)
        self.best_loss = np.inf
        self.loss_values: list[float] = []
        self._last_mask: torch.Tensor | None = None

    def __call__(self, x: np.ndarray) -> tuple[np.float32, np.ndarray]:
        variables = torch.from_numpy(x).float().requires_grad_(True)
        logits, probs, loss, max_positive, max_negative, gradient = self._evaluate(variables)
        value = loss.detach().numpy()
        self.loss_values.append(float(value))
        if self.best_logits is None or value < self.best_loss:
            self.best_logits = logits.detach()
            self.best_x = np.array(x, dtype=np.float32)
            self.best_loss = value
        threshold = self.config.prob_threshold
        if max_positive < 1 - threshold and max_negative < threshold:
            return value, np.zeros_like(x)
        mask = probs.detach() > threshold
        if self._last_mask is not None and self.config.min_iou_diff > 0:
            iou = batch_mask_iou(mask, self._last_mask)
            if len(iou) > 0 and iou.mean() > 1 - self.config.min_iou_diff:
                return value, np.zeros_like(x)
        self._last_mask = mask
        return value, gradient().numpy().ravel().astype(np.float64)

    def _loss(self, logits: torch.Tensor, regulariser: torch.Tensor):
        """-> (probabilities, loss + regulariser, max positive violation, max negative violation)."""
        probs = torch.sigmoid(logits)
        loss, max_positive, max_negative = click_mask_loss(probs, self.positive, self.negative)
        return probs, loss + regulariser, max_positive, max_negative

    def _evaluate(self, variables: torch.Tensor):
        """-> (logits, probabilities, loss, max positive/negative violations, gradient thunk).

        The gradient is taken lazily: the early exits need none. torch.autograd.grad, not backward(),
        so that no parameter gradient is computed or accumulated even if the model's require it."""
        with torch.enable_grad():
            unpacked, regulariser = self.unpack(variables)
            logits = self.logits_fn(*unpacked)
            probs, loss, max_positive, max_negative = self._loss(logits, regulariser)
        return logits, probs, loss, max_positive, max_negative, lambda: torch.autograd.grad(loss, variables)[0]


class WindowedClickObjective(ClickObjective):
    """The same f(x), with the network gradient computed on small windows (see `brs.windows`).

    `start_fn(*variables) -> start`: the input of the local part of the network (B, C, h, w), with its
    graph back to the variables. The local part runs on all of it without gradient (loss, mask, logits)
    and on its windows for the gradient; autograd scatters the window gradients back into the whole map
    before the reduction to the per-channel variables, so that this reduction is the very same as with
    the whole-map backward pass (the window gradients themselves are equal to the whole-map ones bit
    for bit where windows do not overlap): the L-BFGS trajectory, which amplifies tiny differences over
    20 evaluations, stays that of the whole-map objective.
    `local_fn(x) -> low-resolution logits` runs the local part; `size` is the full (H, W) to upsample to.
    `plan_windows()` gives the windows (see `brs.windows.plan_windows`).
    The loss, the early exits and `best_logits` come from the whole maps as in `ClickObjective`.
    """

    def __init__(
        self,
        config: BRSConfig,
        start_fn: Callable[..., torch.Tensor],
        local_fn: Callable[[torch.Tensor], torch.Tensor],
        size: tuple[int, int],
        plan_windows: Callable[[], Windows],
        unpack: Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
        positive: torch.Tensor,
        negative: torch.Tensor,
    ) -> None:
        super().__init__(config, None, unpack, positive, negative)
        self.start_fn = start_fn
        self.local_fn = local_fn
        self.size = size
        self._plan_windows = plan_windows
        self._windows: Windows | None = None  # planned at the first gradient: early exits need none

    def _evaluate(self, variables: torch.Tensor):
        with torch.enable_grad():
            unpacked, regulariser = self.unpack(variables)
            start = self.start_fn(*unpacked)
        with torch.no_grad():
            low_logits = self.local_fn(start.detach())
        low_logits.requires_grad_(True)
        with torch.enable_grad():
            logits = upsample_to(low_logits, self.size)
            probs, loss, max_positive, max_negative = self._loss(logits, regulariser)

        def gradient() -> torch.Tensor:
            low_gradient, gradient = torch.autograd.grad(loss, [low_logits, variables])
            if self._windows is None:
                self._windows = self._plan_windows()
            windows = self._windows
            if windows.count == 0:  # no click square: only the regulariser pulls
                return gradient
            with torch.enable_grad():
                outputs = self.local_fn(windows.crop(start))
            output_gradient = windows.crop(low_gradient) * windows.owner
            return gradient + torch.autograd.grad(outputs, variables, output_gradient)[0]

        return logits, probs, loss, max_positive, max_negative, gradient


class SupportClickObjective(ClickObjective):
    """The same f(x), with the gradient taken through the click squares only.

    For networks whose logits after the insertion point are a per-pixel function of the features there (the
    SAM decoder after its transformer: `SamDecoder.masks_on_support`), `support_fn(*variables)` computes the
    logits on the loss support only (0 elsewhere) with a graph back to the variables, and `logits_fn` the
    whole map without one (mask, early exits, best logits). The loss and its gradient are then those of the
    whole-map objective up to float summation order: the loss never looks outside the click squares.
    """

    def __init__(
        self,
        config: BRSConfig,
        logits_fn: Callable[..., torch.Tensor],
        support_fn: Callable[..., torch.Tensor],
        unpack: Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
        positive: torch.Tensor,
        negative: torch.Tensor,
    ) -> None:
        super().__init__(config, logits_fn, unpack, positive, negative)
        self.support_fn = support_fn

    def _evaluate(self, variables: torch.Tensor):
        with torch.no_grad():
            logits = self.logits_fn(*self.unpack(variables)[0])
        with torch.enable_grad():
            unpacked, regulariser = self.unpack(variables)
            _, loss, max_positive, max_negative = self._loss(self.support_fn(*unpacked), regulariser)
        return logits, torch.sigmoid(logits), loss, max_positive, max_negative, (
            lambda: torch.autograd.grad(loss, variables)[0]
        )


def minimise(objective: ClickObjective, x0: np.ndarray, config: LBFGSConfig) -> np.ndarray:
    """Run scipy's L-BFGS-B from x0; returns the final x (float64)."""
    x, _, _ = fmin_l_bfgs_b(
        func=objective, x0=x0, m=config.m, factr=config.factr, pgtol=config.pgtol,
        maxfun=config.maxfun, maxiter=config.maxiter,
    )
    return x
