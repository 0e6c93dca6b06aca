"""Modes, models and predictors of the evaluation: the one place where evaluation builds a predictor.

`PredictorRecipe` assembles a mode's options (the user's predictor options, Zoom-In and its target size per
dataset, the backend, the model or none) for every caller: `fbrs evaluate` (its workers and the gallery's
replay of the worst cases, through `EvaluationSettings.predictor_for`), `fbrs bench` and the benchmarks.
Before, each assembled them itself and they disagreed (the gallery replayed an `--backend onnx` run in torch
and dropped the SAM family's options), so a gallery could show a mask that was not the one scored.

Importing this module is cheap: fbrs.inference, fbrs.models and torch are imported where they are used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbrs.errors import ConfigError
from fbrs.io_utils import file_sha256

RANDOM_WEIGHTS_SEED = 0
#: The Zoom-In target size of a predictor that sees no dataset (the bench's synthetic image).
DEFAULT_ZOOM_IN_TARGET_SIZE = 400

#: factory(mode, model, **options) -> predictor (set_image / add_click); default: create_predictor.
PredictorFactory = Callable[..., Any]


def accepted_options(mode: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """fbrs.inference.accepted_options: the options `mode` takes, and the names of those it ignores."""
    from fbrs.inference import accepted_options as split

    return split(mode, options)


def available_modes() -> list[str]:
    """Every registered predictor mode (learned modes + classical baselines)."""
    from fbrs.inference import available_modes as registered

    return registered()


def mode_needs_model(mode: str) -> bool:
    """Whether `mode` runs on the evaluated model (the DeepLab modes) rather than on its own or none (the SAM
    family, the classical baselines). Unknown names (a test's own factory) count as needing it."""
    from fbrs.registry import PREDICTORS

    try:
        return PREDICTORS.spec(mode).needs_model
    except KeyError:
        return True


def check_modes(modes: list[str]) -> None:
    """ConfigError naming the unknown modes and listing the registered ones."""
    known = available_modes()
    unknown = [mode for mode in modes if mode not in known]
    if unknown:
        listing = ", ".join(known) if known else "none (fbrs.inference is not installed)"
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; available: {listing}")


def load_model_for_evaluation(spec: str | None, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model, description) for --model: a checkpoint path, a registered architecture (random weights,
    seeded), or None = the bundled default model (CheckpointError when it is missing); on `device`."""
    import torch

    from fbrs.models import build_model, list_models, load_default_model, load_model

    if spec is None:
        return load_default_model(device), {"kind": "default", "path": None}
    path = Path(spec)
    if path.is_file():
        identity = {"kind": "checkpoint", "path": str(path.resolve()), "sha256": file_sha256(path)}
        return load_model(path, device), identity
    if spec in list_models():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = build_model(spec).eval().to(device)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model, {"kind": "random-weights", "name": spec, "seed": RANDOM_WEIGHTS_SEED}
    raise ConfigError(
        f"--model {spec!r} is neither a checkpoint file nor a known architecture ({', '.join(list_models())})"
    )


def default_zoom_in_target_size(dataset_name: str | None) -> int:
    """The original evaluation zooms to 600 px on DAVIS, 400 px elsewhere (and without a dataset)."""
    if dataset_name is not None and dataset_name.upper().startswith("DAVIS"):
        return 600
    return DEFAULT_ZOOM_IN_TARGET_SIZE


def default_predictor_factory(mode: str, model: Any, **options: Any) -> Any:
    """fbrs.inference.create_predictor; the model only for the modes that run on it."""
    from fbrs.inference import create_predictor

    return create_predictor(mode, model=model if mode_needs_model(mode) else None, **options)


@dataclass(frozen=True)
class PredictorRecipe:
    """How evaluation builds the predictor of any mode.

    options: the user's predictor options (clicks_limit, with_flip, lbfgs_max_evaluations, max_image_side,
    ...); a mode gets those it takes (`accepted_options`: the SAM family a few, the baselines none).
    zoom_in / zoom_in_target_size: Zoom-In of the DeepLab modes; size None = the original's per dataset
    (`default_zoom_in_target_size`). backend: "torch", "onnx" or "auto", resolved per mode
    (fbrs.onnx.policy.backend_for_mode: modes ONNX Runtime cannot run stay in torch). device: where the
    model is (ONNX Runtime runs on the CPU only)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    zoom_in: bool = True
    zoom_in_target_size: int | None = None
    backend: str = "torch"
    device: str = "cpu"

    def backend_for(self, mode: str) -> str:
        """Where `mode`'s feed-forward part runs: "torch" or "onnx"."""
        from fbrs.onnx.policy import backend_for_mode

        return backend_for_mode(self.backend, mode, self.device)

    def options_for(self, mode: str, dataset_name: str | None = None) -> dict[str, Any]:
        """The keyword options `mode`'s factory gets on dataset `dataset_name` (None: no dataset)."""
        options = dict(self.options)
        options["zoom_in"] = self.zoom_in
        options["zoom_in_target_size"] = self.zoom_in_target_size or default_zoom_in_target_size(dataset_name)
        options, _ = accepted_options(mode, options)
        if mode_needs_model(mode) and self.backend_for(mode) == "onnx":
            options["backend"] = "onnx"
        return options

    def build(
        self, mode: str, model: Any, dataset_name: str | None = None, factory: PredictorFactory | None = None
    ) -> Any:
        """A predictor of `mode` for the samples of `dataset_name`: factory(mode, model or None, **options)
        (default factory: fbrs.inference.create_predictor). model: the evaluated model; modes that do not
        run on it get None."""
        factory = factory or default_predictor_factory
        return factory(mode, model if mode_needs_model(mode) else None, **self.options_for(mode, dataset_name))


__all__ = [
    "PredictorFactory",
    "PredictorRecipe",
    "accepted_options",
    "available_modes",
    "check_modes",
    "default_predictor_factory",
    "default_zoom_in_target_size",
    "load_model_for_evaluation",
    "mode_needs_model",
]
