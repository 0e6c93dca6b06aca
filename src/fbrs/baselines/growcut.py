"""GrowCut (Vezhnevets & Konouchine 2005), computed as the automaton's converged state.

In GrowCut every cell holds a label and a strength theta (seeds: 1, others: 0); a neighbour q conquers
p when g(||C_p - C_q||) * theta_q > theta_p, with g(d) = 1 - d / max d, on the 8-neighbourhood.
Strengths only grow, and the synchronous update is exactly a Bellman-Ford step for the "most reliable
path": at convergence theta_p = max over paths seed -> p of the product of g along the path, and p
carries the label of that path's seed. Taking -log turns the product into a sum, so the converged
automaton is the multi-source shortest-path forest with edge length -log g, which Dijkstra computes
in one O(N log N) pass instead of hundreds of full-image automaton sweeps (tests check the two agree).
"""

from __future__ import annotations

import numpy as np

from fbrs.baselines.image_graph import PixelGraph
from fbrs.baselines.seeded_predictor import SeededPredictor

# -log g is floored so that equal colours still cost a little and ties go to the spatially nearer seed.
MINIMUM_EDGE_LENGTH = 1e-6


def attack_force(colour_distance: np.ndarray, max_distance: float) -> np.ndarray:
    """GrowCut's g: 1 at equal colours, 0 at the largest possible RGB distance."""
    return 1.0 - colour_distance / max_distance


class GrowCutPredictor(SeededPredictor):
    """GrowCut cellular automaton (hard labels)."""

    name = "growcut"
    description = "classical: GrowCut cellular automaton"

    def _prepare(self, image: np.ndarray) -> None:
        self._graph = PixelGraph(image.shape[:2])
        colours = image.astype(np.float64)
        max_distance = np.sqrt(3.0) * 255.0

        def length(first, second, offset):
            force = attack_force(np.linalg.norm(colours[first] - colours[second], axis=-1), max_distance)
            # g = 0 would be an impassable edge (-log 0); 1e-12 keeps it finite but prohibitive.
            return np.maximum(-np.log(np.maximum(force, 1e-12)), MINIMUM_EDGE_LENGTH)

        self._lengths = self._graph.edge_lengths(length)

    def _segment(self, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        _, source, _ = self._graph.shortest_paths(self._lengths, positive | negative)
        flat_positive = positive.ravel()
        reached = source >= 0
        foreground = np.zeros(positive.shape, dtype=bool)
        foreground[reached] = flat_positive[source[reached]]
        return foreground.astype(np.float32)
