"""The function L-BFGS minimises, and the L-BFGS call itself (scipy's L-BFGS-B, as the original)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import fmin_l_bfgs_b

from fbrs.inference.brs.loss import batch_mask_iou, click_mask_loss


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
        logits_fn: Callable[..., torch.Tensor],
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
        self.best_loss = np.inf
        self.loss_values: list[float] = []
        self._last_mask: torch.Tensor | None = None

    def __call__(self, x: np.ndarray) -> tuple[np.float32, np.ndarray]:
        variables = torch.from_numpy(x).float().requires_grad_(True)
        with torch.enable_grad():
            unpacked, regulariser = self.unpack(variables)
            logits = self.logits_fn(*unpacked)
            probs = torch.sigmoid(logits)
            loss, max_positive, max_negative = click_mask_loss(probs, self.positive, self.negative)
            loss = loss + regulariser
        value = loss.detach().numpy()
        self.loss_values.append(float(value))
        if self.best_logits is None or value < self.best_loss:
            self.best_logits = logits.detach()
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
        loss.backward()
        return value, variables.grad.numpy().ravel().astype(np.float64)


def minimise(objective: ClickObjective, x0: np.ndarray, config: LBFGSConfig) -> np.ndarray:
    """Run scipy's L-BFGS-B from x0; returns the final x (float64)."""
    x, _, _ = fmin_l_bfgs_b(
        func=objective, x0=x0, m=config.m, factr=config.factr, pgtol=config.pgtol,
        maxfun=config.maxfun, maxiter=config.maxiter,
    )
    return x
