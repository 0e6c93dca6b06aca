"""PNG figures of evaluation runs: mean IoU vs clicks (paper Figure 6) and worst-case galleries.

Figures are drawn with matplotlib's object-oriented API (a `Figure` on its own Agg canvas), never through
pyplot: no display is needed, and the backend a notebook or application chose is left as it was. Files are
written atomically. matplotlib is imported by the functions that draw (importing this module is cheap).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.evaluation.datasets import Dataset, Sample
from fbrs.evaluation.protocol import replayed_mask
from fbrs.evaluation.run_folder import load_run_records, mask_path
from fbrs.evaluation.settings import EvaluationSettings
from fbrs.evaluation.summary import worst_samples
from fbrs.inference.clicks import Click
from fbrs.io_utils import atomic_path


def new_figure(rows: int, columns: int, figsize: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """(figure, axes (rows, columns)): a matplotlib Figure on an Agg canvas of its own, outside pyplot (so
    it needs no closing and touches no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def colour_cycle() -> list[str]:
    """The colours of matplotlib's current property cycle (one per mode, in order)."""
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Write `figure` as a PNG (100 dpi, tight), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_miou_vs_clicks(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """One panel per dataset, one line per mode: mean IoU after click 1..max_clicks; a dashed line marks
    each mode's oracle mIoU when the run has one (paper Figure 6)."""
    datasets = summary["datasets"]
    figure, axes = new_figure(1, len(datasets), (4.2 * len(datasets), 3.6))
    colours = colour_cycle()
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
    return save_figure(figure, path)


def draw_gallery(tiles: list[dict[str, Any]], path: str | os.PathLike, title: str = "", columns: int = 3) -> Path:
    """A grid of samples. Each tile: {"image": (H,W,3) uint8, "mask": (H,W) bool prediction,
    "gt": (H,W) bool, "clicks": [Click], "caption": str} (other keys are ignored). Prediction tinted
    blue, ground-truth outline yellow, positive clicks green, negative red."""
    rows = max(1, math.ceil(len(tiles) / columns))
    figure, axes = new_figure(rows, columns, (4.0 * columns, 3.2 * rows))
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
    return save_figure(figure, path)


def _overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    result = image.astype(np.float32)
    result[mask] = 0.55 * result[mask] + 0.45 * np.array([30, 90, 255], np.float32)
    outline = gt & ~binary_erosion(gt, iterations=2)
    result[outline] = (255, 230, 0)
    return result.astype(np.uint8)


def final_mask(
    run_dir: str | os.PathLike,
    dataset_name: str,
    mode: str,
    sample: Sample,
    clicks: list[Click],
    threshold: float,
    predictor_for: Callable[[str, str], Any],
) -> np.ndarray:
    """The (H, W) bool mask a run scored for `sample` after its recorded `clicks`: the --save-masks file when
    there is one, otherwise the clicks replayed on predictor_for(mode, dataset_name), the run's predictor
    (EvaluationSettings.predictor_for: the same backend and options as the scored run)."""
    saved = mask_path(run_dir, dataset_name, mode, sample.name)
    if saved.is_file():
        from PIL import Image

        with Image.open(saved) as image:
            return np.asarray(image) > 127
    return replayed_mask(predictor_for(mode, dataset_name), sample.image, clicks, threshold)


def worst_case_tiles(
    run_dir: str | os.PathLike,
    dataset: Dataset,
    mode: str,
    records: list[dict[str, Any]],
    settings: EvaluationSettings,
    predictor_for: Callable[[str, str], Any],
) -> list[dict[str, Any]]:
    """The `draw_gallery` tiles of the settings.gallery_size hardest samples among `records` (one
    (dataset, mode) of the run), with the masks the run scored (`final_mask`)."""
    names = dataset.sample_names()
    tiles = []
    for record in worst_samples(records, settings.gallery_size, settings.target_iou, settings.max_clicks):
        index = record["index"] if names[record["index"]] == record["sample"] else names.index(record["sample"])
        sample = dataset[index]
        clicks = [Click(y, x, bool(p)) for y, x, p in record["clicks"]]
        mask = final_mask(run_dir, dataset.name, mode, sample, clicks, settings.pred_threshold, predictor_for)
        final_iou = record["ious"][-1] if record["ious"] else 0.0
        clicks_text = f"{len(clicks)} click" + ("s" if len(clicks) != 1 else "")
        tiles.append(
            {
                "sample": sample.name,
                "image": sample.image,
                "mask": mask,
                "gt": sample.mask,
                "clicks": clicks,
                "caption": f"{sample.name}: {clicks_text}, IoU {final_iou:.3f}",
            }
        )
    return tiles


def write_worst_case_galleries(
    run_dir: str | os.PathLike,
    datasets: dict[str, Dataset],
    settings: EvaluationSettings,
    predictor_for: Callable[[str, str], Any],
) -> list[Path]:
    """gallery/<dataset>__<mode>.png with the run's hardest samples of every (dataset, mode) of `settings`;
    predictor_for(mode, dataset name) -> the run's predictor (see `final_mask`)."""
    run_dir = Path(run_dir)
    written = []
    for dataset_name, by_mode in load_run_records(run_dir).items():
        dataset = datasets.get(dataset_name)
        if dataset is None:
            continue
        for mode, records in by_mode.items():
            if mode not in settings.modes or not records:
                continue
            tiles = worst_case_tiles(run_dir, dataset, mode, records, settings, predictor_for)
            path = run_dir / "gallery" / f"{dataset_name}__{mode}.png"
            written.append(draw_gallery(tiles, path, title=f"{dataset_name} / {mode}: worst cases"))
    return written


__all__ = [
    "colour_cycle",
    "draw_gallery",
    "final_mask",
    "new_figure",
    "plot_miou_vs_clicks",
    "save_figure",
    "worst_case_tiles",
    "write_worst_case_galleries",
]
