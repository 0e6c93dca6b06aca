"""Validation during training: robot clicks on held-out TRAINING objects, plain feed-forward (no BRS).

The clicks come from the evaluation's ClickRobot (the paper's protocol: the next click goes to the point
farthest from the boundary of the larger error region), but without zoom-in or refinement and on
downscaled images, so that it runs every few hundred training steps on a CPU; `fbrs evaluate` is the
full benchmark.
"""

from __future__ import annotations

import numpy as np
import torch

from fbrs.evaluation.metrics import PREDICTION_THRESHOLD, iou
from fbrs.evaluation.robot import ClickRobot
from fbrs.training.data import ValidationObject, normalize_image


def clicks_to_points(clicks: list, per_kind: int) -> np.ndarray:
    """Robot clicks -> model points (1, 2 * per_kind, 2) float32 (y, x), positives first, (-1, -1) padding."""
    points = np.full((1, 2 * per_kind, 2), -1.0, dtype=np.float32)
    positives = [(c.y, c.x) for c in clicks if c.is_positive]
    negatives = [(c.y, c.x) for c in clicks if not c.is_positive]
    if positives:
        points[0, : len(positives)] = positives
    if negatives:
        points[0, per_kind : per_kind + len(negatives)] = negatives
    return points


def validation_score(metrics: dict[str, float]) -> float:
    """The number a run is judged by: the mean of the IoU@k values of `validate`'s metrics."""
    return float(np.mean([value for key, value in metrics.items() if key.startswith("iou@")]))


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    objects: list[ValidationObject],
    clicks: tuple[int, ...],
    iou_target: float,
    device: torch.device,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean IoU after each number of clicks in `clicks` and NoC@iou_target (capped at max(clicks);
    an object that never reaches the target counts max(clicks)). Keys: "iou@1", ..., "noc@85".

    Objects are run in batches: each image is padded (bottom / right, with the ImageNet mean, which is 0
    after normalisation) to the largest size of its batch, and the model's output is cut back to the image."""
    max_clicks = max(clicks)
    ious = np.zeros((len(objects), max_clicks), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(objects), batch_size):
            batch = objects[first : first + batch_size]
            height = max(item.gt.shape[0] for item in batch)
            width = max(item.gt.shape[1] for item in batch)
            images = torch.zeros((len(batch), 3, height, width))
            for index, item in enumerate(batch):
                images[index, :, : item.gt.shape[0], : item.gt.shape[1]] = normalize_image(item.image)
            images = images.to(device)
            robots = [ClickRobot(item.gt, item.ignore) for item in batch]
            takes_mask = bool(getattr(getattr(model, "config", None), "prev_mask_input", False))
            previous = None
            predictions = [np.zeros_like(item.gt) for item in batch]
            for click_index in range(max_clicks):
                for robot, prediction in zip(robots, predictions, strict=True):
                    robot.next_click(prediction)
                points = torch.from_numpy(
                    np.concatenate([clicks_to_points(robot.clicks, click_index + 1) for robot in robots])
                ).to(device)
                if takes_mask:  # the previous click's probabilities (zeros before the first), as a user sees them
                    output = torch.sigmoid(model(images, points, previous))
                    previous = output
                else:
                    output = torch.sigmoid(model(images, points))
                probabilities = output.cpu().numpy()
                for index, item in enumerate(batch):
                    object_height, object_width = item.gt.shape
                    predictions[index] = probabilities[index, 0, :object_height, :object_width] > PREDICTION_THRESHOLD
                    ious[first + index, click_index] = iou(item.gt, predictions[index], item.ignore)
    finally:
        model.train(was_training)
    metrics = {f"iou@{k}": float(ious[:, k - 1].mean()) for k in sorted(set(clicks))}
    reached = ious >= iou_target
    clicks_needed = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, max_clicks)
    metrics[f"noc@{round(iou_target * 100)}"] = float(clicks_needed.mean())
    return metrics
