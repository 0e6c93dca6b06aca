"""The 8-connected pixel graph and shortest paths on it (geodesic distances).

Geodesic distances are computed exactly on the 8-connected grid with Dijkstra
(scipy.sparse.csgraph), with a length on every *edge* (e.g. the colour difference between the two
pixels). That is the discrete form of the geodesic distance of Bai & Sapiro / Criminisi et al.,
gives the shortest-path forest (the predecessors needed by geodesic star convexity) and the seed
each pixel is reached from (its label) in one call, and costs O(N log N) in compiled code.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

# Half of the 8-neighbourhood; every undirected edge is (p, p + offset) for one of these.
FORWARD_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
# All eight (dy, dx) neighbour offsets.
ALL_OFFSETS = FORWARD_OFFSETS + tuple((-dy, -dx) for dy, dx in FORWARD_OFFSETS)


def shifted_pairs(shape: tuple[int, int], offset: tuple[int, int]) -> tuple[tuple[slice, slice], ...]:
    """Slices (first, second) such that first[i] and second[i] are neighbours p and p + offset."""
    height, width = shape
    dy, dx = offset
    first = (slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx)))
    second = (slice(max(0, dy), height - max(0, -dy)), slice(max(0, dx), width - max(0, -dx)))
    return first, second


class PixelGraph:
    """The 8-connected grid graph of an (H, W) image; node index = y * W + x.

    Edge lengths are given per undirected edge, as one array per FORWARD_OFFSETS entry, each of the
    shape of `shifted_pairs(shape, offset)[0]`.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        node_ids = np.arange(shape[0] * shape[1]).reshape(shape)
        tails, heads = [], []
        for offset in FORWARD_OFFSETS:
            first, second = shifted_pairs(shape, offset)
            tails.append(node_ids[first].ravel())
            heads.append(node_ids[second].ravel())
        tails_all = np.concatenate(tails + heads)
        heads_all = np.concatenate(heads + tails)
        # A fixed CSR layout: per query only the edge lengths change, in this order.
        self._order = np.argsort(tails_all, kind="stable")
        self._indices = heads_all[self._order].astype(np.int32)
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(tails_all, minlength=node_ids.size))]).astype(
            np.int32
        )

    def edge_lengths(self, compute) -> list[np.ndarray]:
        """Call compute(first, second, offset) -> lengths for each forward offset; returns the list."""
        return [compute(*shifted_pairs(self.shape, offset), offset) for offset in FORWARD_OFFSETS]

    def shortest_paths(
        self, lengths: list[np.ndarray], sources: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Multi-source Dijkstra.

        lengths: per FORWARD_OFFSETS entry, the positive lengths of its edges (see class docstring).
        sources: (H, W) bool, the seed pixels (distance 0).
        Returns (distance (H, W) float64, inf where unreachable; source (H, W) int64, flat index of the
        seed each pixel is reached from, -1 if none; predecessor (H, W) int64, flat index of the previous
        pixel on that path, -1 at seeds and unreachable pixels).
        """
        height, width = self.shape
        flat_lengths = np.concatenate([np.asarray(length, dtype=np.float64).ravel() for length in lengths])
        data = np.concatenate([flat_lengths, flat_lengths])[self._order]
        graph = csr_matrix((data, self._indices, self._indptr), shape=(height * width,) * 2)
        seed_indices = np.flatnonzero(sources)
        if seed_indices.size == 0:
            unreachable = np.full(self.shape, -1, dtype=np.int64)
            return np.full(self.shape, np.inf), unreachable, unreachable.copy()
        distance, predecessor, source = dijkstra(
            graph, directed=True, indices=seed_indices, return_predecessors=True, min_only=True
        )
        predecessor = np.where(predecessor < 0, -1, predecessor).astype(np.int64)
        source = np.where(source < 0, -1, source).astype(np.int64)
        return distance.reshape(self.shape), source.reshape(self.shape), predecessor.reshape(self.shape)
