"""Classical interactive segmentation baselines of the paper's Table 3, behind the predictor interface
of the learned modes: graph cut, random walker, geodesic matting, Euclidean / geodesic star convexity and
GrowCut. `mode_specs()` gives their registry entries (read by fbrs.registry.load_plugins); their names
are the classes' `name` attributes, listed by `fbrs.registry.PREDICTORS.names(family="baseline")`."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from fbrs.baselines.geodesic import GeodesicMattingPredictor
from fbrs.baselines.graphcut import GraphCutPredictor
from fbrs.baselines.growcut import GrowCutPredictor
from fbrs.baselines.random_walker import RandomWalkerPredictor
from fbrs.baselines.seeded_predictor import SeededPredictor, build_from_options
from fbrs.baselines.star_convexity import EuclideanStarConvexityPredictor, GeodesicStarConvexityPredictor

if TYPE_CHECKING:
    from fbrs.registry import ModeSpec

# In the order they have always been listed in (`fbrs models`, the app).
_BASELINES: tuple[type[SeededPredictor], ...] = (
    GeodesicMattingPredictor,
    GraphCutPredictor,
    GrowCutPredictor,
    RandomWalkerPredictor,
    EuclideanStarConvexityPredictor,
    GeodesicStarConvexityPredictor,
)


def _factory(predictor_class: type[SeededPredictor]):
    def factory(model=None, **options) -> SeededPredictor:
        return build_from_options(predictor_class, options)

    factory.__doc__ = f"{predictor_class.description} (model unused)"
    return factory


def mode_specs() -> list[ModeSpec]:
    """The registry entries of the classical baselines (called by fbrs.registry.load_plugins)."""
    from fbrs.registry import ModeSpec

    return [
        ModeSpec(
            name=predictor_class.name, factory=_factory(predictor_class), family="baseline",
            description=predictor_class.description, needs_model=False,
            options=tuple(inspect.signature(predictor_class).parameters),
            # The options of the learned modes (zoom_in, with_flip, ...) are accepted and ignored, so one option
            # set can drive every registered mode; a name no mode takes is refused.
            ignores_other_modes_options=True, requires=predictor_class.requires,
        )
        for predictor_class in _BASELINES
    ]


__all__ = [
    "EuclideanStarConvexityPredictor",
    "GeodesicMattingPredictor",
    "GeodesicStarConvexityPredictor",
    "GraphCutPredictor",
    "GrowCutPredictor",
    "RandomWalkerPredictor",
    "SeededPredictor",
    "mode_specs",
]
