"""The registry entries of the learned DeepLab modes (`mode_specs`, read by fbrs.registry.load_plugins).

Apart from fbrs.inference.modes (the modes' facts) because these entries build Predictors, and the Predictor
itself reads those facts: one module holding both would import the Predictor that imports it.
"""

from __future__ import annotations

import inspect

from fbrs.inference.modes import MODES, LearnedMode
from fbrs.inference.predictor import Predictor
from fbrs.registry import ModeSpec


def _factory(mode: LearnedMode):
    def factory(model=None, **options):
        if model is None:
            from fbrs.models import load_default_model

            model = load_default_model()
        return Predictor(model, mode=mode.name, **options)

    factory.__doc__ = mode.description
    return factory


def mode_specs() -> list[ModeSpec]:
    """The registry entries of the learned modes (called by fbrs.registry.load_plugins)."""
    # The options are the Predictor's own keyword arguments, read from its signature so they never drift.
    options = tuple(name for name in inspect.signature(Predictor).parameters if name not in ("model", "mode"))
    return [
        ModeSpec(
            name=mode.name, factory=_factory(mode), family="deeplab", description=mode.description,
            needs_model=True, options=options, onnx=mode.onnx, oracle=mode.oracle, gradients=mode.gradients,
            config=mode,
        )
        for mode in MODES.values()
    ]
