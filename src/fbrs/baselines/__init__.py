"""Classical interactive segmentation baselines of the paper's Table 3, behind the predictor interface
of the learned modes. Importing this package registers them in fbrs.registry.PREDICTORS:
graphcut, random-walker, geodesic-matting, esc, gsc, growcut."""

from fbrs.baselines.geodesic import GeodesicMattingPredictor
from fbrs.baselines.graphcut import GraphCutPredictor
from fbrs.baselines.growcut import GrowCutPredictor
from fbrs.baselines.random_walker import RandomWalkerPredictor
from fbrs.baselines.seeded_predictor import SeededPredictor
from fbrs.baselines.star_convexity import EuclideanStarConvexityPredictor, GeodesicStarConvexityPredictor

BASELINE_NAMES = ("graphcut", "random-walker", "geodesic-matting", "esc", "gsc", "growcut")

__all__ = [
    "BASELINE_NAMES",
    "EuclideanStarConvexityPredictor",
    "GeodesicMattingPredictor",
    "GeodesicStarConvexityPredictor",
    "GraphCutPredictor",
    "GrowCutPredictor",
    "RandomWalkerPredictor",
    "SeededPredictor",
]
