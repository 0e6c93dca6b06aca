"""Geodesic matting / segmentation (Bai & Sapiro 2007).

Colour models from the foreground and background seeds give every pixel a foreground probability
P_F = L_F / (L_F + L_B). The geodesic distance from a seed set integrates |grad P_F| along the path;
on the 8-connected grid an edge (p, q) has length |P_F(p) - P_F(q)| + SPATIAL_WEIGHT * dist(p, q)
(the small spatial term breaks ties in flat regions by proximity). A pixel is foreground when its
geodesic distance to the foreground seeds is below that to the background seeds (hard labels).
"""

from __future__ import annotations

import numpy as np

from fbrs.baselines.colour_model import colour_bins, negative_log_likelihood
from fbrs.baselines.image_graph import PixelGraph
from fbrs.baselines.seeded_predictor import SeededPredictor

SPATIAL_WEIGHT = 1e-3  # per pixel step; a full flat 500-px crossing costs 0.5, i.e. half a P_F jump


class GeodesicMattingPredictor(SeededPredictor):
    """Bai-Sapiro geodesic segmentation (hard labels)."""

    name = "geodesic-matting"
    description = "classical: geodesic distance matting (Bai-Sapiro)"

    def _prepare(self, image: np.ndarray) -> None:
        self._bins = colour_bins(image)
        self._graph = PixelGraph(image.shape[:2])

    def foreground_probability(self, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """(h, w) float64 P_F from the colour models of the seeds."""
        # L_F / (L_F + L_B) = 1 / (1 + exp(nll_F - nll_B)), written so that it cannot overflow.
        difference = negative_log_likelihood(self._bins, positive) - negative_log_likelihood(self._bins, negative)
        return 0.5 * (1.0 - np.tanh(0.5 * difference))

    def _segment(self, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        probability = self.foreground_probability(positive, negative)

        def length(first, second, offset):
            return np.abs(probability[first] - probability[second]) + SPATIAL_WEIGHT * np.hypot(*offset)

        _, source, _ = self._graph.shortest_paths(self._graph.edge_lengths(length), positive | negative)
        reached = source >= 0
        foreground = np.zeros(positive.shape, dtype=bool)
        foreground[reached] = positive.ravel()[source[reached]]
        return foreground.astype(np.float32)
