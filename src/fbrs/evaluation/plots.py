"""PNG figures of evaluation runs: mean IoU vs clicks (paper Figure 6) and worst-case galleries.
matplotlib runs on the Agg backend (no display needed); files are written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.inference.clicks import Click
from fbrs.io_utils import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_miou_vs_clicks(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """One panel per dataset, one line per mode: mean IoU after click 1..max_clicks; a dashed line marks
    each mode's oracle mIoU when the run has one (paper Figure 6)."""
    plt = _pyplot()
    datasets = summary["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    modes: list[str] = []
    for entry in summary["results"]:
        if entry["mode"] not in modes:
            modes.append(entry["mode"])
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for entry in summary["results"]:
            if entry["dataset"] != dataset:
                continue
            colour = colours[modes.index(entry["mode"]) % len(colours)]
            curve = entry["miou_per_click"]
            axis.plot(range(1, len(curve) + 1), curve, label=entry["mode"], color=colour, linewidth=1.6)
            if entry.get("oracle_miou") is not None:
                axis.axhline(
                    entry["oracle_miou"], color=colour, linestyle="--", linewidth=1.0, label=f"{entry['mode']} oracle"
                )
        axis.set_title(dataset)
        axis.set_xlabel("number of clicks")
        axis.set_ylabel("mean IoU")
        axis.set_xlim(1, max(2, summary["max_clicks"]))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    path = Path(path)
    _save_figure(figure, path)
    return path


def draw_gallery(tiles: list[dict[str, Any]], path: str | os.PathLike, title: str = "", columns: int = 3) -> Path:
    """A grid of samples. Each tile: {"image": (H,W,3) uint8, "mask": (H,W) bool prediction,
    "gt": (H,W) bool, "clicks": [Click], "caption": str}. Prediction tinted blue, ground-truth
    outline yellow, positive clicks green, negative red."""
    plt = _pyplot()
    rows = max(1, math.ceil(len(tiles) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, tile in zip(axes.ravel(), tiles, strict=False):
        axis.imshow(_overlay(tile["image"], tile["mask"], tile["gt"]))
        for click in tile["clicks"]:
            axis.scatter(
                [click.x], [click.y], s=28, c="lime" if click.is_positive else "red", edgecolors="black", linewidths=0.6
            )
        axis.set_title(tile["caption"], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    path = Path(path)
    _save_figure(figure, path)
    return path


def _overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    result = image.astype(np.float32)
    result[mask] = 0.55 * result[mask] + 0.45 * np.array([30, 90, 255], np.float32)
    outline = gt & ~binary_erosion(gt, iterations=2)
    result[outline] = (255, 230, 0)
    return result.astype(np.uint8)


def write_worst_case_galleries(run_dir: Path, datasets: dict[str, Any], context: Any) -> list[Path]:
    """gallery/<dataset>__<mode>.png with the run's hardest samples. The final masks come from --save-masks
    files when present, otherwise from replaying the recorded clicks with the run's predictor."""
    from fbrs.evaluation.reports import worst_samples
    from fbrs.evaluation.runner import (
        load_run_records,
        mask_path,
        mode_needs_model,
        predictor_options_for,
        replay_clicks,
    )

    settings = context.settings
    written = []
    for dataset_name, by_mode in load_run_records(run_dir).items():
        dataset = datasets.get(dataset_name)
        if dataset is None:
            continue
        names = dataset.sample_names()
        for mode, records in by_mode.items():
            if mode not in settings.modes or not records:
                continue
            tiles = []
            for record in worst_samples(records, settings.gallery_size, settings.target_iou, settings.max_clicks):
                index = record["index"] if names[record["index"]] == record["sample"] else names.index(record["sample"])
                sample = dataset[index]
                clicks = [Click(y, x, bool(p)) for y, x, p in record["clicks"]]
                saved = mask_path(run_dir, dataset_name, mode, sample.name)
                if saved.is_file():
                    from PIL import Image

                    mask = np.asarray(Image.open(saved)) > 127
                else:
                    needs_model = mode_needs_model(mode)
                    options = predictor_options_for(settings, dataset_name) if needs_model else {}
                    predictor = context.factory(mode, context.model if needs_model else None, **options)
                    probs = replay_clicks(predictor, sample.image, clicks)
                    mask = np.zeros_like(sample.mask) if probs is None else np.asarray(probs) > settings.pred_threshold
                final_iou = record["ious"][-1] if record["ious"] else 0.0
                clicks_text = f"{len(clicks)} click" + ("s" if len(clicks) != 1 else "")
                tiles.append(
                    {
                        "image": sample.image,
                        "mask": mask,
                        "gt": sample.mask,
                        "clicks": clicks,
                        "caption": f"{sample.name}: {clicks_text}, IoU {final_iou:.3f}",
                    }
                )
            path = run_dir / "gallery" / f"{dataset_name}__{mode}.png"
            written.append(draw_gallery(tiles, path, title=f"{dataset_name} / {mode}: worst cases"))
    return written
