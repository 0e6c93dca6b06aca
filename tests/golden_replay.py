"""Replaying the original code's goldens with our predictor, per click, for the tests and for the
measurement of their spread across CPUs (benchmarks/golden_spread.py).

Two ways to run the fixed click sequence of predictor_outputs.npz:

* free-running: our predictor carries its own state from click to click, as a user's would. Every
  rounding difference of click k feeds the start of click k+1, and L-BFGS amplifies it.
* from the golden's state (f-BRS modes): before click k >= 2 the predictor is put in the state the
  original code had after click k-1: its L-BFGS variables (opt_data_click<k-1>) and its previous
  probability map (which Zoom-In crops around). Everything up to the first L-BFGS evaluation of click k
  is then determined by the inputs alone, and only one click's trajectory can drift.

`replay_predictor` returns what each click produced; `predictor_mismatches` lists every way it departs
from the golden beyond the tolerances given, so a test asserts an empty list and the teeth tests assert a
non-empty one for a deliberately wrong setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B", "f-BRS-C")
FEATURE_MODES = ("f-BRS-A", "f-BRS-B", "f-BRS-C")
MASK_THRESHOLD = 0.49


@dataclass
class PredictorGolden:
    image: np.ndarray  # (H, W, 3) uint8
    clicks: list[tuple[int, int, bool]]  # (y, x, positive)
    outputs: Any  # the npz archive
    meta: dict[str, Any]

    def probs(self, mode: str, index: int) -> np.ndarray:
        return self.outputs[f"{mode}__probs"][index]

    def variables(self, mode: str, index: int) -> np.ndarray | None:
        key = f"{mode}__opt_data_click{index + 1}"
        return self.outputs[key] if key in self.outputs.files else None

    def click_meta(self, mode: str, index: int) -> dict[str, Any]:
        return self.meta[mode]["per_click"][index]


def load_predictor_golden(reference_dir: Path) -> PredictorGolden:
    outputs = np.load(reference_dir / "predictor_outputs.npz")
    meta = json.loads((reference_dir / "predictor_meta.json").read_text())
    clicks = [
        (int(y), int(x), bool(positive))
        for (y, x), positive in zip(outputs["clicks_yx"], outputs["clicks_is_positive"], strict=True)
    ]
    return PredictorGolden(outputs["image_uint8"], clicks, outputs, meta)


@dataclass
class ClickRecord:
    probs: np.ndarray  # (H, W) float32
    loss_values: list[float]  # every L-BFGS function value of this click
    roi: list[int] | None
    image_changed: bool
    variables: np.ndarray | None  # f-BRS variables after the click


@dataclass
class Replay:
    mode: str
    from_golden_state: bool
    clicks: list[ClickRecord] = field(default_factory=list)


def replay_predictor(
    model: Any, golden: PredictorGolden, mode: str, from_golden_state: bool, **options: Any
) -> Replay:
    """Run golden.clicks through `fbrs.Predictor(model, mode=mode, **options)`.

    options may include `windowed_gradient` (FeatureBRS) and `reg_weight` (BRSConfig): set on the refiner."""
    import dataclasses

    import fbrs

    windowed = options.pop("windowed_gradient", None)
    reg_weight = options.pop("reg_weight", None)
    predictor = fbrs.Predictor(model, mode=mode, **options)
    if windowed is not None:
        predictor.refiner.windowed_gradient = windowed
    if reg_weight is not None:
        predictor.refiner.config = dataclasses.replace(predictor.refiner.config, reg_weight=reg_weight)
    predictor.set_image(golden.image)
    replay = Replay(mode, from_golden_state and mode in FEATURE_MODES)
    for index, (y, x, positive) in enumerate(golden.clicks):
        if replay.from_golden_state and index > 0:
            _enter_golden_state(predictor, golden, mode, index - 1)
        probs = predictor.add_click(y, x, positive)
        roi = predictor.zoom_in.roi if predictor.zoom_in is not None else None
        variables = getattr(predictor.refiner, "variables", None)
        replay.clicks.append(
            ClickRecord(
                probs=np.array(probs),
                loss_values=list(predictor.refiner.last_loss_values),
                roi=None if roi is None else [int(v) for v in roi],
                image_changed=bool(predictor.zoom_in.image_changed) if predictor.zoom_in is not None else False,
                variables=None if variables is None else np.array(variables),
            )
        )
    return replay


def _enter_golden_state(predictor: Any, golden: PredictorGolden, mode: str, index: int) -> None:
    """Replace the predictor's L-BFGS variables and previous map by the original's after click `index`."""
    state = predictor.get_state()
    probs = np.array(golden.probs(mode, index), dtype=np.float32)
    probs.flags.writeable = False
    refiner_state = dict(state["refiner"])
    refiner_state["variables"] = np.array(golden.variables(mode, index), dtype=np.float32)
    zoom_state = state["zoom_in"]
    if zoom_state is not None:
        zoom_state = {**zoom_state, "previous_probs": probs}
    predictor.set_state({**state, "probabilities": probs, "refiner": refiner_state, "zoom_in": zoom_state})


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    a, b = first > MASK_THRESHOLD, second > MASK_THRESHOLD
    return float((a & b).sum() / max(1, (a | b).sum()))


@dataclass(frozen=True)
class ClickTolerance:
    """How far click k's result may land from the golden's. max_abs None: only the mask checks apply."""

    first_loss_rtol: float
    max_abs: float | None
    mean_abs: float
    mask_iou: float
    same_evaluation_count: bool


def predictor_mismatches(
    replay: Replay, golden: PredictorGolden, tolerances: list[ClickTolerance | None]
) -> list[str]:
    """Every departure of `replay` from the golden beyond `tolerances` (one per click; None: that click is
    not determined and not compared), as readable lines."""
    problems: list[str] = []
    mode = replay.mode
    for index, (record, tolerance) in enumerate(zip(replay.clicks, tolerances, strict=True)):
        if tolerance is None:
            continue
        where = f"{mode} click {index + 1}"
        expected = golden.probs(mode, index)
        meta = golden.click_meta(mode, index)
        if record.roi != meta["object_roi_rmin_rmax_cmin_cmax"]:
            problems.append(f"{where}: Zoom-In ROI {record.roi} != {meta['object_roi_rmin_rmax_cmin_cmax']}")
        if record.image_changed != meta["zoom_image_changed"]:
            problems.append(f"{where}: zoom image_changed {record.image_changed} != {meta['zoom_image_changed']}")
        expected_losses = meta["lbfgs_fvals"]
        if bool(record.loss_values) != bool(expected_losses):
            problems.append(f"{where}: {len(record.loss_values)} L-BFGS evaluations, golden {len(expected_losses)}")
            continue
        if expected_losses:
            first, golden_first = record.loss_values[0], expected_losses[0]
            if abs(first - golden_first) > tolerance.first_loss_rtol * abs(golden_first):
                problems.append(f"{where}: first L-BFGS value {first:.6f} != {golden_first:.6f}")
            if tolerance.same_evaluation_count and len(record.loss_values) != len(expected_losses):
                problems.append(f"{where}: {len(record.loss_values)} L-BFGS evaluations, golden {len(expected_losses)}")
        difference = np.abs(record.probs - expected)
        if tolerance.max_abs is not None and difference.max() > tolerance.max_abs:
            problems.append(f"{where}: max |dp| {difference.max():.2e} > {tolerance.max_abs:.0e}")
        if difference.mean() > tolerance.mean_abs:
            problems.append(f"{where}: mean |dp| {difference.mean():.2e} > {tolerance.mean_abs:.0e}")
        overlap = mask_iou(record.probs, expected)
        if overlap < tolerance.mask_iou:
            problems.append(f"{where}: mask IoU with the golden {overlap:.4f} < {tolerance.mask_iou}")
    return problems
