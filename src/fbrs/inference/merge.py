"""Progressive merge: from some click on, a click changes the mask only where the change touches it.

A click is a local correction: the robot (and an annotator) clicks inside the largest error, so the
region that should change is the one around the click. A network answer, though, may also flip parts of
the mask far away (SAM given its own previous logits: 0.90 -> 0.29 at one click, issue 14), and with
many clicks those far flips undo what earlier clicks fixed. The merge (FocalClick's "progressive merge",
Chen et al., CVPR 2022, re-derived here) keeps, of the pixels whose side of the threshold changed, only
the connected regions (8-connected) that touch the new click; every other changed pixel keeps its
previous value. The first clicks are taken whole (`MergeConfig.start_click`): they shape the object.

Works on any (H, W) map and threshold: SAM's low-res logits (threshold 0, the merged logits are also
the next click's mask input) or a full-resolution probability map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fbrs.inference.clicks import Click

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MergeConfig:
    """start_click: the first click (1-based) whose answer is merged; the clicks before it are taken
    whole. monotone: a positive click may only add to the mask and a negative one only remove from it
    (changes the other way are reverted too). reach: a changed region "touches" the click when it comes
    within this many pixels of it (pixels of the map merged: SAM's low-res frame). When no changed region
    touches the click (the network did not act there), the answer is taken whole: reverting everything
    would leave the mask as it was and the user clicking on the same spot. On held-out training objects
    no setting beat the unmerged loop (benchmarks/sam_options.py --merges; table in docs/sam.md): the
    merge is off in every mode, and these defaults are the middle candidate of that table."""

    start_click: int = 3
    monotone: bool = False
    reach: float = 1.5

    def __post_init__(self) -> None:
        if self.start_click < 2:
            raise ValueError(f"merge start_click must be at least 2 (the first click has nothing to merge "
                             f"into), got {self.start_click}")
        if self.reach < 0:
            raise ValueError(f"merge reach must be >= 0 pixels, got {self.reach}")


def reverted_pixels(
    previous: np.ndarray, new: np.ndarray, click: Click, threshold: float, config: MergeConfig
) -> np.ndarray:
    """(H, W) bool: the pixels of `new` that go back to `previous` ((H, W) maps of the same frame, e.g.
    logits with threshold 0); click: the new click, (y, x) in that frame's pixels."""
    before, after = previous > threshold, new > threshold
    changed = before != after
    if config.monotone:
        allowed = after & ~before if click.is_positive else before & ~after
    else:
        allowed = changed
    regions, _ = ndimage.label(allowed, structure=_EIGHT_CONNECTED)
    # The labelled pixels within `reach` of the click, searched in the square window around it.
    height, width = changed.shape
    reach = int(np.ceil(config.reach))
    y, x = int(round(min(max(click.y, 0), height - 1))), int(round(min(max(click.x, 0), width - 1)))
    top, left = max(0, y - reach), max(0, x - reach)
    rows, columns = np.nonzero(regions[top : y + reach + 1, left : x + reach + 1])
    rows, columns = rows + top, columns + left
    close = (rows - click.y) ** 2 + (columns - click.x) ** 2 <= config.reach**2
    touching = np.unique(regions[rows[close], columns[close]])
    if len(touching) == 0:  # the network did not act at the click: take its answer whole
        return np.zeros_like(changed)
    return changed & ~np.isin(regions, touching)


def progressive_merge(
    previous: np.ndarray, new: np.ndarray, click: Click, threshold: float, config: MergeConfig
) -> np.ndarray:
    """`new` with the changes that do not touch `click` reverted to `previous` (both (H, W), same frame)."""
    return np.where(reverted_pixels(previous, new, click, threshold, config), previous, new)
