"""Clicks and their two encodings for the network: the padded points tensor and the 3x3 click squares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fbrs.errors import InvalidClickError


@dataclass(frozen=True)
class Click:
    """One click at pixel (y, x) = (row, column), positive = on the object: the one click type of the
    library, the evaluation robot (integer coordinates) and the app (which parses its (x, y) JSON into it
    once, in fbrs.app.validation). Coordinates may be fractional (after Zoom-In). Constructing one checks
    nothing; `validate_click` is the check."""

    y: float
    x: float
    is_positive: bool

    @property
    def positive(self) -> bool:
        """`is_positive` under the name the protocol's results, the app's JSON and the robot's former click
        type use (tests/test_evaluation_golden.py, a golden test, reads `click.positive`)."""
        return self.is_positive

    @property
    def coords(self) -> tuple[float, float]:
        return (self.y, self.x)

    def moved(self, y: float, x: float) -> Click:
        return Click(y, x, self.is_positive)


ClickList = Sequence[Click]


def validate_click(click: Click, image_size: tuple[int, int]) -> Click:
    """The one check of a click, wherever it comes from (a predictor's add_click, the app's HTTP layer, the
    evaluation robot, `fbrs predict`, `fbrs serve`): (y, x) numbers, finite, inside an image of
    (height, width), 0 <= y < height and 0 <= x < width (fractional coordinates allowed).

    Returns the click with float coordinates and a bool `is_positive`; InvalidClickError (with the same
    message everywhere) otherwise."""
    height, width = image_size
    y, x = click.y, click.x
    try:
        y, x = float(y), float(x)
    except (TypeError, ValueError, OverflowError):
        raise InvalidClickError(f"click coordinates must be numbers, got y={y!r}, x={x!r}") from None
    if not (math.isfinite(y) and math.isfinite(x)):
        raise InvalidClickError(f"click (y={y}, x={x}) has a non-finite coordinate")
    if not (0 <= y < height and 0 <= x < width):
        raise InvalidClickError(f"click (y={y:g}, x={x:g}) is outside the image (height {height}, width {width})")
    return Click(y, x, bool(click.is_positive))


def click_sequence(points: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """`predict`'s inputs as (N, 2) float64 (y, x) points and (N,) labels; InvalidClickError if they do not pair
    up or are empty."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if len(points) != len(labels):
        raise InvalidClickError(f"{len(points)} points but {len(labels)} labels")
    if len(points) == 0:
        raise InvalidClickError("predict needs at least one click")
    return points, labels


def clicks_are_prefix(clicks: ClickList, points: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the non-empty `clicks` are the first clicks of (points, labels)."""
    if len(clicks) > len(points) or len(clicks) == 0:
        return False
    return all(
        click.y == y and click.x == x and click.is_positive == bool(label)
        for click, (y, x), label in zip(clicks, points, labels, strict=False)
    )


def points_tensor(clicks_lists: Sequence[ClickList], clicks_limit: int | None = None) -> torch.Tensor:
    """Encode click lists as the network's points tensor.

    Returns (B, 2N, 2) float64 (y, x): per batch item the first N rows are positive clicks, the last N
    negative, padded with (-1, -1). N = max count of one kind over the batch, capped by `clicks_limit`,
    at least 1. With a limit only the first `clicks_limit` clicks (chronologically) are used, as the
    original does.
    """
    positives = [sum(click.is_positive for click in clicks) for clicks in clicks_lists]
    negatives = [len(clicks) - count for clicks, count in zip(clicks_lists, positives, strict=True)]
    num_points = max(positives + negatives)
    if clicks_limit is not None:
        num_points = min(clicks_limit, num_points)
    num_points = max(1, num_points)
    rows = []
    for clicks in clicks_lists:
        clicks = list(clicks)[:clicks_limit]
        positive = [click.coords for click in clicks if click.is_positive]
        negative = [click.coords for click in clicks if not click.is_positive]
        pad = (-1.0, -1.0)
        rows.append(positive + [pad] * (num_points - len(positive)) + negative + [pad] * (num_points - len(negative)))
    # float64: clicks mapped into a Zoom-In crop are fractional, and the original carries them in float64.
    return torch.tensor(rows, dtype=torch.float64)


def click_squares(
    clicks_lists: Sequence[ClickList], height: int, width: int, radius: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,H,W) float32 masks of (2*radius+1)^2 squares around every positive / negative click.

    Centres are `round(y), round(x)` with Python's round-half-to-even. A square whose top or left edge
    would be negative is dropped entirely, as Python slicing does in the original (a click on row 0 or
    column 0 has no square); the BRS loss depends on this.
    """
    positive = torch.zeros((len(clicks_lists), 1, height, width), dtype=torch.float32)
    negative = torch.zeros_like(positive)
    for index, clicks in enumerate(clicks_lists):
        for click in clicks:
            y, x = int(round(click.y)), int(round(click.x))
            y1, x1 = y - radius, x - radius
            target = positive if click.is_positive else negative
            if y1 < 0 or x1 < 0:
                # Python slicing with a negative start counts from the end: reproduce it exactly.
                rows = range(height)[y1 : y + radius + 1]
                cols = range(width)[x1 : x + radius + 1]
                if len(rows) and len(cols):
                    target[index, 0, rows.start : rows.stop, cols.start : cols.stop] = 1.0
                continue
            target[index, 0, y1 : y + radius + 1, x1 : x + radius + 1] = 1.0
    return positive, negative
