"""Probability maps stored as their non-zero box: the undo history of a large image without a full copy per click.

After Zoom-In a probability map is exactly zero outside the crop it was pasted into, so a 12-megapixel map
(48 MB as float32) is kept as the few megabytes of its non-zero bounding box. Packing is lossless: `unpack`
returns an array equal, bit for bit, to the one packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this fraction of the image the box is stored; a dense map (e.g. the first click's whole-image
# prediction, where the sigmoid is never exactly 0) stays one array and is shared, not copied.
_PACK_BELOW_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class PackedMap:
    """A (height, width) map that is zero outside rows [top, bottom) and columns [left, right)."""

    shape: tuple[int, int]
    top: int
    left: int
    values: np.ndarray  # (bottom - top, right - left), read-only

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def unpack(self) -> np.ndarray:
        """The full (height, width) map as a new read-only array."""
        full = np.zeros(self.shape, dtype=self.values.dtype)
        rows, cols = self.values.shape
        full[self.top : self.top + rows, self.left : self.left + cols] = self.values
        full.flags.writeable = False
        return full


def pack(array: np.ndarray) -> np.ndarray | PackedMap:
    """A 2-D map -> PackedMap when its non-zero box covers under half of it, else the array itself."""
    if array.ndim != 2 or array.size == 0:
        return array
    row_hits = np.flatnonzero(array.any(axis=1))
    if row_hits.size == 0:
        top, bottom, left, right = 0, 0, 0, 0
    else:
        col_hits = np.flatnonzero(array[row_hits[0] : row_hits[-1] + 1].any(axis=0))
        top, bottom, left, right = int(row_hits[0]), int(row_hits[-1]) + 1, int(col_hits[0]), int(col_hits[-1]) + 1
    if (bottom - top) * (right - left) >= _PACK_BELOW_FRACTION * array.size:
        return array
    values = array[top:bottom, left:right].copy()
    values.flags.writeable = False
    return PackedMap((int(array.shape[0]), int(array.shape[1])), top, left, values)


def unpack(stored: np.ndarray | PackedMap | None) -> np.ndarray | None:
    """Inverse of `pack` (None stays None; a plain array is returned as it is)."""
    if isinstance(stored, PackedMap):
        return stored.unpack()
    return stored
