"""Inference: clicks, the public Predictor, BRS refiners, Zoom-In, and `create_predictor` for any mode."""

from __future__ import annotations

from typing import Any

from fbrs.inference import modes as _modes  # noqa: F401 - registers the six learned modes
from fbrs.inference import sam_modes as _sam_modes  # noqa: F401 - registers the SAM family's modes
from fbrs.inference.clicks import Click
from fbrs.inference.predictor import Predictor
from fbrs.registry import PREDICTORS


def available_modes() -> list[str]:
    """Every registered mode: the six learned ones and the classical baselines (their registration needs
    PyMaxflow, a required dependency: if it is missing this raises, never hides the baselines)."""
    import fbrs.baselines  # noqa: F401 - registers the classical baselines

    return PREDICTORS.names()


def accepted_options(mode: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split predictor `options` into those `mode`'s factory takes and the names of those it ignores.

    DeepLab modes (and names the registry does not know, e.g. a test's own factory) take every option. A
    mode registered with an `options` tuple (the SAM family: lbfgs_max_evaluations, prob_threshold, ...)
    takes those; other modes without a model (the classical baselines) take none."""
    if mode not in PREDICTORS:
        available_modes()  # the baselines register on import
    if mode not in PREDICTORS:
        return dict(options), []
    meta = PREDICTORS.meta(mode)
    if meta.get("needs_model", True):
        return dict(options), []
    names = set(meta.get("options", ()))
    return {k: v for k, v in options.items() if k in names}, [k for k in options if k not in names]


def create_predictor(mode: str, model=None, **options: Any):
    """Build a predictor for `mode`. Learned modes need a model (default: the bundled one);
    classical baselines ignore it. The result has set_image / add_click / undo / reset / clicks."""
    if mode not in PREDICTORS:
        available_modes()  # the baselines register on import; the learned modes already have
    return PREDICTORS.get(mode)(model=model, **options)


__all__ = ["Click", "Predictor", "accepted_options", "available_modes", "create_predictor"]
