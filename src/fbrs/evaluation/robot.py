"""The click robot of the standard protocol (f-BRS / BRS / RITM evaluation).

Each next click goes to the interior point of the larger error region that is farthest from the
region's boundary: positive if that point lies in a false-negative region (object missed), negative if in
a false-positive region. Behaviour matches the original `Clicker` exactly:
  * error maps exclude ignore pixels; they are zero-padded by one pixel before the Euclidean distance
    transform, so the image border counts as region boundary;
  * pixels already clicked get distance 0 (the robot never clicks the same pixel twice);
  * positive only if the false-negative maximum is strictly larger: a tie (including a perfect prediction,
    where both maxima are 0) gives a negative click;
  * among equal maxima the first in row-major order wins, so a perfect prediction yields -(0, 0).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from fbrs.inference.clicks import Click, validate_click


class ClickRobot:
    """Places the protocol's clicks for one ground-truth object: `fbrs.inference.clicks.Click`s with integer
    pixel coordinates (y = row, x = column).

    gt_mask: (H, W) bool object mask. ignore_mask: (H, W) bool pixels that never count (or None).
    """

    def __init__(self, gt_mask: np.ndarray, ignore_mask: np.ndarray | None = None) -> None:
        gt_mask = np.asarray(gt_mask)
        if gt_mask.ndim != 2:
            raise ValueError(f"gt_mask must be (H, W), got shape {gt_mask.shape}")
        self.gt_mask = gt_mask.astype(bool)
        if ignore_mask is None:
            ignore_mask = np.zeros_like(self.gt_mask)
        ignore_mask = np.asarray(ignore_mask, dtype=bool)
        if ignore_mask.shape != self.gt_mask.shape:
            raise ValueError(f"ignore_mask shape {ignore_mask.shape} differs from gt_mask {self.gt_mask.shape}")
        self.valid = ~ignore_mask
        self.not_clicked = np.ones_like(self.gt_mask)
        self.clicks: list[Click] = []

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClickRobot:
        """From the original encoding: (H, W) int, 1 = object, -1 = ignore, anything else background."""
        labels = np.asarray(labels)
        return cls(labels == 1, labels == -1)

    def next_click(self, pred_mask: np.ndarray) -> Click:
        """Choose, record and return the next click for the current prediction (H, W) bool."""
        pred_mask = np.asarray(pred_mask, dtype=bool)
        if pred_mask.shape != self.gt_mask.shape:
            raise ValueError(f"prediction shape {pred_mask.shape} differs from the ground truth {self.gt_mask.shape}")
        false_negative = self.gt_mask & ~pred_mask & self.valid
        false_positive = ~self.gt_mask & pred_mask & self.valid
        fn_distance = interior_distance(false_negative) * self.not_clicked
        fp_distance = interior_distance(false_positive) * self.not_clicked
        fn_max, fp_max = fn_distance.max(), fp_distance.max()
        positive = bool(fn_max > fp_max)
        distance, peak = (fn_distance, fn_max) if positive else (fp_distance, fp_max)
        # argmax over a bool array = the first hit in row-major order, like np.where(...)[0].
        flat_index = int(np.argmax(distance == peak))
        y, x = divmod(flat_index, distance.shape[1])
        return self.add_click(Click(y, x, positive))

    def add_click(self, click: Click) -> Click:
        """Record a click placed by someone else (e.g. an initial click), so it is not placed again; it is
        checked as every click is (InvalidClickError outside the mask) and kept at its pixel (integers)."""
        click = validate_click(click, self.gt_mask.shape)
        click = Click(int(click.y), int(click.x), click.is_positive)
        self.clicks.append(click)
        self.not_clicked[click.y, click.x] = False
        return click


def interior_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest non-region pixel, the image border counting
    as non-region (one pixel of zero padding). (H, W) float64, 0 outside the region."""
    padded = np.pad(region, 1, mode="constant")
    return distance_transform_edt(padded)[1:-1, 1:-1]
