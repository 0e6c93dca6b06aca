"""The six learned predictor modes, registered by name (the paper's names)."""

from __future__ import annotations

from dataclasses import dataclass

from fbrs.registry import PREDICTORS


@dataclass(frozen=True)
class ModeSpec:
    name: str
    refiner: str  # "none" | "input" | "feature"
    target: str | None  # InputBRS target or FeatureBRS insertion point
    clicks_limit: int | None  # default net-clicks limit of the original code
    description: str


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec("NoBRS", "none", None, None, "plain feed-forward network"),
        ModeSpec("RGB-BRS", "input", "rgb", 5, "optimise a correction of the input image (original BRS)"),
        ModeSpec("DistMap-BRS", "input", "distance_maps", 5, "optimise a correction of the distance maps"),
        ModeSpec("f-BRS-A", "feature", "after_backbone", 8, "scale/bias after the backbone"),
        ModeSpec("f-BRS-B", "feature", "after_aspp", 8, "scale/bias after ASPP (recommended)"),
        ModeSpec("f-BRS-C", "feature", "after_decoder", 8, "scale/bias after the decoder"),
    )
}


def _register(spec: ModeSpec) -> None:
    def factory(model=None, **options):
        from fbrs.inference.predictor import Predictor

        if model is None:
            from fbrs.models import load_default_model

            model = load_default_model()
        return Predictor(model, mode=spec.name, **options)

    factory.__doc__ = spec.description
    PREDICTORS.register(spec.name, needs_model=True, description=spec.description)(factory)


for _spec in MODES.values():
    _register(_spec)
