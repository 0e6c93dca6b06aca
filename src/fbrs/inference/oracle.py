"""The f-BRS oracle of the paper's Appendix B: how far can scale and bias alone take the mask?

After the interactive clicks, L-BFGS continues to optimise the f-BRS variables with the ground-truth mask
as the target: every object pixel acts as a positive click and every background pixel as a negative one
(ignored pixels count as neither). The network input, the Zoom-In crop and the cached features stay
those of the last click, so the result is the best mask reachable from that state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.inference.brs.objective import ClickObjective, LBFGSConfig, minimise
from fbrs.inference.brs.refiners import FeatureBRS


def oracle_refine(predictor, gt_mask: np.ndarray, ignore_mask: np.ndarray | None = None,
                  max_evaluations: int = 100) -> np.ndarray:
    """Continue f-BRS optimisation of `predictor` towards `gt_mask` (H, W) bool; returns (H, W) float32 probs.

    The predictor's own state is left unchanged. Needs an f-BRS mode and at least one click.
    """
    refiner = predictor.refiner
    if not isinstance(refiner, FeatureBRS):
        raise ValueError(f"the oracle continues f-BRS optimisation; mode {predictor.mode} is not f-BRS")
    if not predictor.clicks or refiner._cache is None:
        raise ValueError("the oracle starts from an interactive result: add clicks first")
    height, width = predictor.image_size
    if gt_mask.shape != (height, width):
        raise ValueError(f"gt_mask has shape {gt_mask.shape}, the image is {(height, width)}")
    ignore = np.zeros_like(gt_mask, dtype=bool) if ignore_mask is None else ignore_mask.astype(bool)
    zoom = predictor.zoom_in
    roi = zoom.roi if zoom is not None and zoom.get_state()["applied"] else None
    features, skip = refiner._cache
    positive = torch.from_numpy((gt_mask.astype(bool) & ~ignore).astype(np.float32))[None, None]
    negative = torch.from_numpy((~gt_mask.astype(bool) & ~ignore).astype(np.float32))[None, None]
    if roi is not None:
        rmin, rmax, cmin, cmax = roi
        positive = positive[:, :, rmin : rmax + 1, cmin : cmax + 1]
        negative = negative[:, :, rmin : rmax + 1, cmin : cmax + 1]
        input_size = tuple(zoom.get_state()["roi_image"].shape[2:])
    else:
        input_size = (height, width)
    positive = F.interpolate(positive, size=input_size, mode="nearest")
    negative = F.interpolate(negative, size=input_size, mode="nearest")
    if refiner.with_flip:
        positive = torch.cat([positive, torch.flip(positive, dims=[3])])
        negative = torch.cat([negative, torch.flip(negative, dims=[3])])
    batch = features.shape[0] // 2 if refiner.with_flip else features.shape[0]
    model = predictor.model
    config = dataclasses.replace(refiner.config, min_iou_diff=0.0)

    def unpack(x: torch.Tensor):
        scale, bias = torch.chunk(x, 2, dim=0)
        regulariser = config.reg_weight * (torch.sum(scale**2) + refiner.reg_bias_weight * torch.sum(bias**2))
        return (1 + scale, bias), regulariser

    def logits_fn(scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        scale, bias = scale.view(batch, -1, 1, 1), bias.view(batch, -1, 1, 1)
        if refiner.with_flip:
            scale, bias = scale.repeat(2, 1, 1, 1), bias.repeat(2, 1, 1, 1)
        return model.logits_from(refiner.insertion, features * scale + bias, skip, input_size)

    objective = ClickObjective(config, logits_fn, unpack, positive, negative)
    lbfgs = LBFGSConfig(maxfun=max_evaluations, maxiter=2 * max_evaluations)
    minimise(objective, np.asarray(refiner.variables, dtype=np.float64), lbfgs)
    with torch.no_grad():
        logits = objective.best_logits
        if refiner.with_flip:
            logits = 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3]))
        probs = torch.sigmoid(logits)
        if roi is not None:
            rmin, rmax, cmin, cmax = roi
            pasted = torch.zeros((1, 1, height, width), dtype=probs.dtype)
            pasted[:, :, rmin : rmax + 1, cmin : cmax + 1] = F.interpolate(
                probs, size=(rmax - rmin + 1, cmax - cmin + 1), mode="bilinear", align_corners=True
            )
            probs = pasted
    return probs[0, 0].numpy().astype(np.float32)
