"""Euclidean and geodesic star convexity (Gulshan et al., CVPR 2010): the graph cut energy of
`graphcut.py` plus the constraint that the foreground is star-convex with respect to the positive
seeds (every positive seed pixel is a star centre; each pixel belongs to the star of its nearest seed).

The constraint is enforced exactly: every pixel p is linked to its parent q, the next pixel on its
path towards its star centre, and "p foreground while q background" is forbidden by an edge p -> q of
infinite capacity (Veksler 2008). The parent is
* ESC: the next pixel of the straight digital line to the nearest positive seed pixel;
* GSC: the predecessor on the geodesic shortest path from the positive seeds, with edge length
  sqrt(dist(p, q)^2 + (GEODESIC_COLOUR_WEIGHT * ||I_p - I_q||)^2) (RGB in 0..255).
Following parents strictly decreases the distance to the seeds, so the parent links form a forest
rooted at the positive seeds (no cycles).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from fbrs.baselines.graphcut import HARD, PAIRWISE_WEIGHT, GraphCutPredictor
from fbrs.baselines.image_graph import FORWARD_OFFSETS, PixelGraph, shifted_pairs
from fbrs.baselines.seeds import SEED_RADIUS

# Weight of the colour difference in the geodesic length (per 0..255 RGB level): crossing an edge of
# 40 levels costs as much as 20 pixels of flat colour.
GEODESIC_COLOUR_WEIGHT = 0.5


def euclidean_parents(positive: np.ndarray) -> np.ndarray | None:
    """(h, w, 2) int64 (dy, dx) step from each pixel to its parent on the straight line to the nearest
    positive seed pixel ((0, 0) at the seeds); None without positive seeds."""
    if not positive.any():
        return None
    _, nearest = distance_transform_edt(~positive, return_indices=True)
    rows, cols = np.indices(positive.shape)
    delta_y, delta_x = nearest[0] - rows, nearest[1] - cols
    longest = np.maximum(np.abs(delta_y), np.abs(delta_x))
    longest = np.maximum(longest, 1)
    # One step along the dominant axis, the other rounded: the digital line towards the seed.
    return np.stack([np.rint(delta_y / longest), np.rint(delta_x / longest)], axis=-1).astype(np.int64)


def geodesic_parents(graph: PixelGraph, lengths: list[np.ndarray], positive: np.ndarray) -> np.ndarray | None:
    """Like euclidean_parents, but the parent is the predecessor on the geodesic shortest-path forest
    grown from the positive seeds (unreachable pixels get (0, 0))."""
    if not positive.any():
        return None
    _, _, predecessor = graph.shortest_paths(lengths, positive)
    width = positive.shape[1]
    flat = np.arange(predecessor.size).reshape(predecessor.shape)
    has_parent = predecessor >= 0
    steps = np.zeros(positive.shape + (2,), dtype=np.int64)
    steps[..., 0] = np.where(has_parent, predecessor // width - flat // width, 0)
    steps[..., 1] = np.where(has_parent, predecessor % width - flat % width, 0)
    return steps


class _StarConvexityPredictor(GraphCutPredictor):
    # The hard star edges make max-flow several times slower than the plain cut (long augmenting chains).
    default_max_side = 320

    def _parents(self, positive: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def _extra_capacities(self, positive: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        steps = self._parents(positive)
        if steps is None:
            return None
        extra = []
        for offset in FORWARD_OFFSETS:
            first, second = shifted_pairs(positive.shape, offset)
            # p -> p + offset is hard when p's parent is p + offset; the reverse when it is the other way.
            forward = (steps[first][..., 0] == offset[0]) & (steps[first][..., 1] == offset[1])
            backward = (steps[second][..., 0] == -offset[0]) & (steps[second][..., 1] == -offset[1])
            extra.append((HARD * forward, HARD * backward))
        return extra


class EuclideanStarConvexityPredictor(_StarConvexityPredictor):
    """Graph cut with Euclidean star convexity around the positive seeds (ESC)."""

    name = "esc"
    description = "classical: graph cut + Euclidean star convexity (Gulshan et al.)"

    def _parents(self, positive: np.ndarray) -> np.ndarray | None:
        return euclidean_parents(positive)


class GeodesicStarConvexityPredictor(_StarConvexityPredictor):
    """Graph cut with geodesic star convexity around the positive seeds (GSC)."""

    name = "gsc"
    description = "classical: graph cut + geodesic star convexity (Gulshan et al.)"

    def __init__(
        self,
        seed_radius: float = SEED_RADIUS,
        border_background: bool = True,
        max_side: int | None = -1,
        pairwise_weight: float = PAIRWISE_WEIGHT,
        geodesic_colour_weight: float = GEODESIC_COLOUR_WEIGHT,
    ) -> None:
        super().__init__(seed_radius, border_background, max_side, pairwise_weight)
        self.geodesic_colour_weight = float(geodesic_colour_weight)

    def _prepare(self, image: np.ndarray) -> None:
        super()._prepare(image)
        self._graph = PixelGraph(image.shape[:2])
        colours = image.astype(np.float64)
        weight = self.geodesic_colour_weight

        def length(first, second, offset):
            colour_distance = np.linalg.norm(colours[first] - colours[second], axis=-1)
            return np.sqrt(np.hypot(*offset) ** 2 + (weight * colour_distance) ** 2)

        self._lengths = self._graph.edge_lengths(length)

    def _parents(self, positive: np.ndarray) -> np.ndarray | None:
        return geodesic_parents(self._graph, self._lengths, positive)
