"""Graph cut (Boykov & Jolly 2001): colour models from the seeds, contrast-sensitive pairwise term,
hard seed constraints, exact minimum cut with PyMaxflow.

Energy, with x_p = 1 for foreground:
    E(x) = sum_p U_p(x_p) + sum_{p~q, 8-neighbours} w_pq [x_p != x_q]
    U_p(1) = -log P(I_p | foreground seeds),  U_p(0) = -log P(I_p | background seeds)
    w_pq   = PAIRWISE_WEIGHT * exp(-beta ||I_p - I_q||^2) / dist(p, q),  beta = 1 / (2 <||I_p - I_q||^2>)
(the contrast term and beta as in GrabCut, Rother et al. 2004); seeds are hard constraints.
"""

from __future__ import annotations

import numpy as np

from fbrs.baselines.colour_model import colour_bins, negative_log_likelihood
from fbrs.baselines.image_graph import FORWARD_OFFSETS, shifted_pairs
from fbrs.baselines.seeded_predictor import SeededPredictor
from fbrs.baselines.seeds import SEED_RADIUS

PAIRWISE_WEIGHT = 50.0  # GrabCut's gamma
# Capacity of a hard constraint: larger than any cut through unary and pairwise terms can cost.
HARD = 1e9


def contrast_weights(image: np.ndarray, pairwise_weight: float = PAIRWISE_WEIGHT) -> list[np.ndarray]:
    """Contrast-sensitive edge weights of the 8-connected grid.

    image: (H, W, 3) uint8. Returns, per FORWARD_OFFSETS entry, a float64 array of the shape of
    `shifted_pairs(shape, offset)[0]`: the weight of each edge (p, p + offset).
    """
    colours = image.astype(np.float64)
    squared_differences = []
    for offset in FORWARD_OFFSETS:
        first, second = shifted_pairs(image.shape[:2], offset)
        squared_differences.append(((colours[first] - colours[second]) ** 2).sum(axis=-1))
    mean_squared = np.concatenate([d.ravel() for d in squared_differences]).mean()
    beta = 1.0 / (2.0 * mean_squared) if mean_squared > 0 else 0.0
    return [
        pairwise_weight * np.exp(-beta * squared) / np.hypot(*offset)
        for offset, squared in zip(FORWARD_OFFSETS, squared_differences, strict=True)
    ]


class GraphCutPredictor(SeededPredictor):
    """Boykov-Jolly graph cut (hard labels). Solved at <= 400 px (about 0.3 s per click)."""

    name = "graphcut"
    description = "classical: graph cut (Boykov-Jolly)"
    # PyMaxflow is imported where the cut is computed, so that without it the registry lists this
    # mode (and esc, gsc) as unavailable with the reason instead of failing to import the baselines.
    requires = (("maxflow", "PyMaxflow"),)
    default_max_side = 400

    def __init__(
        self,
        seed_radius: float = SEED_RADIUS,
        border_background: bool = True,
        max_side: int | None = -1,
        pairwise_weight: float = PAIRWISE_WEIGHT,
    ) -> None:
        super().__init__(seed_radius=seed_radius, border_background=border_background, max_side=max_side)
        self.pairwise_weight = float(pairwise_weight)

    def _prepare(self, image: np.ndarray) -> None:
        self._bins = colour_bins(image)
        self._pairwise = contrast_weights(image, self.pairwise_weight)
        node_ids = np.arange(image.shape[0] * image.shape[1]).reshape(image.shape[:2])
        self._edge_ends = [
            (node_ids[first].ravel(), node_ids[second].ravel())
            for first, second in (shifted_pairs(image.shape[:2], offset) for offset in FORWARD_OFFSETS)
        ]

    def _unaries(self, positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cost of foreground, cost of background) per pixel, (h, w) float64 each, seeds hard."""
        foreground_cost = negative_log_likelihood(self._bins, positive)
        background_cost = negative_log_likelihood(self._bins, negative)
        foreground_cost[positive], background_cost[positive] = 0.0, HARD
        foreground_cost[negative], background_cost[negative] = HARD, 0.0
        return foreground_cost, background_cost

    def _extra_capacities(self, positive: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Hook for hard pairwise constraints (star convexity): per FORWARD_OFFSETS entry, extra
        capacities (forward p -> p + offset, backward p + offset -> p) of the shape of the pairwise
        weights. The plain graph cut adds none."""
        return None

    def _segment(self, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        import maxflow  # optional at import: the registry lists the mode as unavailable without PyMaxflow

        graph = maxflow.GraphFloat()
        node_ids = graph.add_grid_nodes(positive.shape)
        extra = self._extra_capacities(positive)
        for index, ((tails, heads), weights) in enumerate(zip(self._edge_ends, self._pairwise, strict=True)):
            forward = backward = weights
            if extra is not None:
                forward, backward = weights + extra[index][0], weights + extra[index][1]
            graph.add_edges(tails, heads, forward.ravel(), backward.ravel())
        foreground_cost, background_cost = self._unaries(positive, negative)
        # Source side = foreground: a source-side node pays its sink capacity, so sink = foreground cost.
        graph.add_grid_tedges(node_ids, background_cost, foreground_cost)
        graph.maxflow()
        return (~graph.get_grid_segments(node_ids)).astype(np.float32)
