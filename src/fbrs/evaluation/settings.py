"""What `fbrs evaluate` does: its settings, their validation, the run's identity and the predictor of each
(mode, dataset)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fbrs.errors import ConfigError
from fbrs.evaluation.metrics import DEFAULT_MAX_CLICKS, DEFAULT_TARGET_IOU, PREDICTION_THRESHOLD
from fbrs.evaluation.predictors import PredictorFactory, PredictorRecipe

# Settings that change the numbers: a resumed run must agree on all of them.
IDENTITY_FIELDS = (
    "model",
    "max_clicks",
    "target_iou",
    "pred_threshold",
    "zoom_in",
    "zoom_in_target_size",
    "stop_at_target",
    "oracle",
    "predictor_options",
    "backend",
)


@dataclass
class EvaluationSettings:
    """What `fbrs evaluate` does. model: a checkpoint path, a registered architecture name (random
    weights, seeded; for testing the mechanics) or None for the bundled default model.
    zoom_in_target_size None = the original's 400 (600 for DAVIS). stop_at_target: stop a sample once
    IoU >= target_iou (the standard protocol); off, every sample gets max_clicks clicks."""

    datasets: list[str]
    modes: list[str]
    model: str | None = None
    max_clicks: int = DEFAULT_MAX_CLICKS
    target_iou: float = DEFAULT_TARGET_IOU
    pred_threshold: float = PREDICTION_THRESHOLD
    zoom_in: bool = True
    zoom_in_target_size: int | None = None
    stop_at_target: bool = True
    oracle: bool = False
    predictor_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    limit: int | None = None
    jobs: int = 1
    device: str = "cpu"
    save_masks: bool = False
    gallery_size: int = 6
    backend: str = "torch"  # "torch", "onnx" or "auto": fbrs.onnx.policy.backend_for_mode, per mode

    def validate(self) -> None:
        if not self.datasets:
            raise ConfigError("no datasets given; e.g. --datasets GrabCut,Berkeley,DAVIS")
        if not self.modes:
            raise ConfigError("no modes given; e.g. --modes NoBRS,f-BRS-B")
        if self.max_clicks < 1:
            raise ConfigError(f"--max-clicks must be >= 1, got {self.max_clicks}")
        if not 0.0 < self.target_iou <= 1.0:
            raise ConfigError(f"--target-iou must be in (0, 1], got {self.target_iou}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.jobs > 1 and self.device != "cpu":
            raise ConfigError(f"--jobs {self.jobs} runs CPU worker processes; use --jobs 1 with --device {self.device}")
        from fbrs.onnx.policy import check_backend_choice

        check_backend_choice(self.backend, self.device)
        if self.oracle and not any(mode.startswith("f-BRS") for mode in self.modes):
            raise ConfigError("--oracle continues f-BRS optimisation: include an f-BRS mode, e.g. --modes f-BRS-B")

    @property
    def predictor_recipe(self) -> PredictorRecipe:
        return PredictorRecipe(
            options=self.predictor_options,
            zoom_in=self.zoom_in,
            zoom_in_target_size=self.zoom_in_target_size,
            backend=self.backend,
            device=self.device,
        )

    def backend_for(self, mode: str) -> str:
        """The backend of `mode`, "torch" or "onnx" (modes ONNX Runtime cannot run stay in torch)."""
        return self.predictor_recipe.backend_for(mode)

    def predictor_for(self, mode: str, dataset: str, model: Any, factory: PredictorFactory | None = None) -> Any:
        """The predictor of `mode` on the samples of dataset `dataset` (its name: the Zoom-In target size
        depends on it), built on `model` (modes with their own model or none get None) by `factory`
        (default fbrs.inference.create_predictor). The workers that score the samples and the gallery that
        replays them both build theirs here, so a gallery shows the masks that were scored."""
        return self.predictor_recipe.build(mode, model, dataset, factory)

    def uses_oracle(self, mode: str, predictor: Any) -> bool:
        """Whether samples of `mode` get the oracle (paper Appendix B). It continues f-BRS: the other modes
        of an --oracle run (NoBRS beside it) get none."""
        return self.oracle and mode.startswith("f-BRS") and hasattr(predictor, "oracle_refine")

    def identity(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}


__all__ = ["IDENTITY_FIELDS", "EvaluationSettings"]
