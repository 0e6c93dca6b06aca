"""Inference: clicks, the public Predictor, BRS refiners, Zoom-In, and `create_predictor` for any mode."""

from __future__ import annotations

from typing import Any

from fbrs.inference import modes as _modes  # noqa: F401 - registers the six learned modes
from fbrs.inference import sam_modes as _sam_modes  # noqa: F401 - registers the SAM family's modes
from fbrs.inference.clicks import Click
from fbrs.inference.predictor import Predictor
from fbrs.registry import PREDICTORS


def available_modes() -> list[str]:
    """Every registered mode: the six learned ones and the classical baselines."""
    _load_baselines()
    return PREDICTORS.names()


def create_predictor(mode: str, model=None, **options: Any):
    """Build a predictor for `mode`. Learned modes need a model (default: the bundled one);
    classical baselines ignore it. The result has set_image / add_click / undo / reset / clicks."""
    _load_baselines()
    return PREDICTORS.get(mode)(model=model, **options)


def _load_baselines() -> None:
    import importlib.util

    if importlib.util.find_spec("fbrs.baselines") is not None:
        import fbrs.baselines  # noqa: F401 - registers the classical baselines


__all__ = ["Click", "Predictor", "available_modes", "create_predictor"]
