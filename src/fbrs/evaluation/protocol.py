"""The standard protocol on one sample: the robot clicks, the predictor answers, the IoU is recorded."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fbrs.errors import FbrsError
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import DEFAULT_MAX_CLICKS, DEFAULT_TARGET_IOU, PREDICTION_THRESHOLD, iou
from fbrs.evaluation.robot import ClickRobot
from fbrs.inference.clicks import Click


@dataclass
class SampleResult:
    """The protocol's outcome for one sample. ious: float32-rounded IoU after each click; click_seconds:
    predictor time per click (the paper's SPC); seconds: whole sample incl. set_image and the robot."""

    name: str
    index: int
    clicks: list[Click]
    ious: list[float]
    click_seconds: list[float]
    seconds: float
    final_mask: np.ndarray | None = None
    oracle_iou: float | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON line of the results file (clicks as [y, x, positive 0/1])."""
        record = {
            "sample": self.name,
            "index": self.index,
            "clicks": [[c.y, c.x, int(c.is_positive)] for c in self.clicks],
            "ious": self.ious,
            "click_seconds": [round(t, 6) for t in self.click_seconds],
            "seconds": round(self.seconds, 6),
        }
        if self.oracle_iou is not None:
            record["oracle_iou"] = self.oracle_iou
        return record


def evaluate_sample(
    predictor: Any,
    sample: Sample,
    *,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    target_iou: float = DEFAULT_TARGET_IOU,
    pred_threshold: float = PREDICTION_THRESHOLD,
    stop_at_target: bool = True,
    oracle: bool = False,
    index: int = -1,
) -> SampleResult:
    """Run the standard protocol on one sample: the robot clicks, the predictor answers, until the IoU
    reaches target_iou (if stop_at_target) or max_clicks clicks were made.

    predictor: an object with set_image((H, W, 3) uint8) and add_click(y, x, positive) -> (H, W) probs;
    set_image must forget the previous image's clicks (every fbrs predictor does), so one predictor can
    evaluate sample after sample.
    oracle: afterwards call `predictor.oracle_refine(gt_mask, ignore_mask)` (paper Appendix B) and report
    the IoU it reaches.
    """
    start = time.perf_counter()
    robot = ClickRobot(sample.mask, sample.ignore)
    predictor.set_image(sample.image)
    pred_mask = np.zeros_like(sample.mask)
    ious: list[float] = []
    click_seconds: list[float] = []
    for _ in range(max_clicks):
        click = robot.next_click(pred_mask)
        click_start = time.perf_counter()
        probs = predictor.add_click(click.y, click.x, click.is_positive)
        click_seconds.append(time.perf_counter() - click_start)
        pred_mask = _threshold(probs, pred_threshold, sample.mask.shape)
        value = iou(sample.mask, pred_mask, sample.ignore)
        # The original stores the curve as float32; keep exactly those values.
        ious.append(float(np.float32(value)))
        if stop_at_target and value >= target_iou:
            break
    oracle_iou = None
    if oracle:
        refine = getattr(predictor, "oracle_refine", None)
        if refine is None:
            raise FbrsError(f"--oracle: predictor {type(predictor).__name__} has no oracle_refine(gt, ignore) hook")
        oracle_probs = refine(sample.mask, sample.ignore)
        oracle_iou = float(iou(sample.mask, _threshold(oracle_probs, pred_threshold, sample.mask.shape), sample.ignore))
    return SampleResult(
        name=sample.name,
        index=index,
        clicks=list(robot.clicks),
        ious=ious,
        click_seconds=click_seconds,
        seconds=time.perf_counter() - start,
        final_mask=pred_mask,
        oracle_iou=oracle_iou,
    )


def _threshold(probs: Any, threshold: float, shape: tuple[int, ...]) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.shape != shape:
        raise FbrsError(f"predictor returned probabilities of shape {probs.shape}, expected {shape}")
    return probs > threshold


def replay_clicks(predictor: Any, image: np.ndarray, clicks: Iterable[Click]) -> np.ndarray | None:
    """Feed recorded clicks ((y, x, positive)) to `predictor` on `image` ((H, W, 3) uint8; set_image forgets
    earlier clicks); returns the last probabilities (H, W) (None: no clicks)."""
    predictor.set_image(image)
    probs = None
    for click in clicks:
        probs = predictor.add_click(click.y, click.x, click.is_positive)
    return probs


def replayed_mask(
    predictor: Any, image: np.ndarray, clicks: Iterable[Click], threshold: float = PREDICTION_THRESHOLD
) -> np.ndarray:
    """The (H, W) bool mask that `evaluate_sample` scored after `clicks`: the replay's last probabilities
    > threshold (all False without clicks, as the protocol starts)."""
    probs = replay_clicks(predictor, image, clicks)
    if probs is None:
        return np.zeros(image.shape[:2], bool)
    return _threshold(probs, threshold, image.shape[:2])


__all__ = ["SampleResult", "evaluate_sample", "replay_clicks", "replayed_mask"]
