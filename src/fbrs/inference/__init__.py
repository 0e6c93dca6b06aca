"""Inference: clicks, the public Predictor, BRS refiners, Zoom-In, and `create_predictor` for any mode.

The modes themselves are known to fbrs.registry.PREDICTORS (see fbrs.registry.load_plugins); the functions
here are its front door for users and the CLIs."""

from __future__ import annotations

from typing import Any

from fbrs.inference.clicks import Click
from fbrs.inference.predictor import Predictor
from fbrs.registry import PREDICTORS


def available_modes() -> list[str]:
    """Every registered mode: the learned ones, the SAM family and the classical baselines, in that order.

    A mode whose optional dependency is missing (e.g. graphcut without PyMaxflow) is listed too;
    `fbrs.registry.PREDICTORS.spec(name).unavailable_reason` says why it cannot be built, and
    `create_predictor` raises MissingDependencyError with that reason."""
    return PREDICTORS.names()


def accepted_options(mode: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split predictor `options` into those `mode` takes (its ModeSpec.options) and the names of the others.

    The DeepLab modes take the Predictor's keyword arguments, the SAM family its own (lbfgs_max_evaluations,
    prob_threshold, ...), a classical baseline its constructor's (seed_radius, ...). A name the registry does
    not know (e.g. a test's own factory) takes every option."""
    if mode not in PREDICTORS:
        return dict(options), []
    names = set(PREDICTORS.spec(mode).options)
    return {k: v for k, v in options.items() if k in names}, [k for k in options if k not in names]


def create_predictor(mode: str, model=None, **options: Any):
    """Build a predictor for `mode`. Learned modes need a model (default: the bundled one); the SAM family
    brings its own and classical baselines need none. The result has set_image / add_click / undo / reset /
    clicks / get_state / set_state / predict.

    KeyError for an unknown mode, ConfigError naming an option the mode does not take, MissingDependencyError
    when the mode's optional dependency is missing."""
    return PREDICTORS.spec(mode).create(model=model, **options)


__all__ = ["Click", "Predictor", "accepted_options", "available_modes", "create_predictor"]
