"""`fbrs evaluate`: the standard protocol over datasets x modes, resumable, optionally in parallel.

Run folder layout (`--out runs/NAME`):
  config.json                       the settings; a resumed run must use the same ones
  results/<dataset>/<mode>.jsonl    one JSON line per finished sample, appended as it finishes
  summary.md / summary.json / summary.csv, miou_vs_clicks.png, gallery/<dataset>__<mode>.png
  masks/<dataset>/<mode>/<sample>.png  final masks (with --save-masks)

Per-sample lines are appended (flushed + fsynced) rather than rewritten atomically: rewriting the whole
file after every sample would cost O(n^2). A line cut short by a kill is dropped on resume (the file is
then rewritten atomically without it), so the results file never holds a half record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import ConfigError, FbrsError
from fbrs.evaluation.datasets import Dataset, Sample, load_dataset
from fbrs.evaluation.metrics import DEFAULT_MAX_CLICKS, DEFAULT_TARGET_IOU, PREDICTION_THRESHOLD, iou
from fbrs.evaluation.robot import ClickRobot
from fbrs.inference.clicks import Click
from fbrs.io_utils import save_png_atomic, write_text_atomic

RESULTS_DIR = "results"
CONFIG_FILE = "config.json"
# Settings that change the numbers: a resumed run must agree on all of them.
IDENTITY_FIELDS = (
    "model",
    "max_clicks",
    "target_iou",
    "pred_threshold",
    "zoom_in",
    "zoom_in_target_size",
    "stop_at_target",
    "oracle",
    "predictor_options",
    "backend",
)
#: The value of identity fields that runs written before the field existed had.
IDENTITY_DEFAULTS = {"backend": "torch"}
RANDOM_WEIGHTS_SEED = 0


@dataclass
class EvaluationSettings:
    """What `fbrs evaluate` does. model: a checkpoint path, a registered architecture name (random
    weights, seeded; for testing the mechanics) or None for the bundled default model.
    zoom_in_target_size None = the original's 400 (600 for DAVIS). stop_at_target: stop a sample once
    IoU >= target_iou (the standard protocol); off, every sample gets max_clicks clicks."""

    datasets: list[str]
    modes: list[str]
    model: str | None = None
    max_clicks: int = DEFAULT_MAX_CLICKS
    target_iou: float = DEFAULT_TARGET_IOU
    pred_threshold: float = PREDICTION_THRESHOLD
    zoom_in: bool = True
    zoom_in_target_size: int | None = None
    stop_at_target: bool = True
    oracle: bool = False
    predictor_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    limit: int | None = None
    jobs: int = 1
    device: str = "cpu"
    save_masks: bool = False
    gallery_size: int = 6
    backend: str = "torch"  # "torch", "onnx" or "auto": fbrs.inference.modes.backend_for_mode, per mode

    def validate(self) -> None:
        if not self.datasets:
            raise ConfigError("no datasets given; e.g. --datasets GrabCut,Berkeley,DAVIS")
        if not self.modes:
            raise ConfigError("no modes given; e.g. --modes NoBRS,f-BRS-B")
        if self.max_clicks < 1:
            raise ConfigError(f"--max-clicks must be >= 1, got {self.max_clicks}")
        if not 0.0 < self.target_iou <= 1.0:
            raise ConfigError(f"--target-iou must be in (0, 1], got {self.target_iou}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.jobs > 1 and self.device != "cpu":
            raise ConfigError(f"--jobs {self.jobs} runs CPU worker processes; use --jobs 1 with --device {self.device}")
        from fbrs.inference.modes import check_backend_choice

        check_backend_choice(self.backend, self.device)

    def backend_for(self, mode: str) -> str:
        """"torch" or "onnx" for `mode` (modes ONNX Runtime cannot run stay in torch)."""
        from fbrs.inference.modes import backend_for_mode

        return backend_for_mode(self.backend, mode, self.device)

    def identity(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}


# ----------------------------------------------------------------------------------------------------------
# One sample


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
        record = {
            "sample": self.name,
            "index": self.index,
            "clicks": [[c.y, c.x, int(c.positive)] for c in self.clicks],
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

    predictor: an object with set_image((H, W, 3) uint8) and add_click(y, x, positive) -> (H, W) probs.
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
        probs = predictor.add_click(click.y, click.x, click.positive)
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
    """Feed recorded clicks to a fresh predictor; returns the last probabilities (H, W) (None: no clicks)."""
    predictor.set_image(image)
    probs = None
    for click in clicks:
        probs = predictor.add_click(click.y, click.x, click.positive)
    return probs


# ----------------------------------------------------------------------------------------------------------
# Modes, models, predictors


def accepted_options(mode: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """fbrs.inference.accepted_options: the options `mode` takes, and the names of those it ignores."""
    from fbrs.inference import accepted_options as split

    return split(mode, options)


def available_modes() -> list[str]:
    """Every registered predictor mode (learned modes + classical baselines)."""
    from fbrs.inference import available_modes as registered

    return registered()


def mode_needs_model(mode: str) -> bool:
    from fbrs.registry import PREDICTORS

    try:
        return bool(PREDICTORS.meta(mode).get("needs_model", True))
    except KeyError:
        return True


def check_modes(modes: list[str]) -> None:
    known = available_modes()
    unknown = [mode for mode in modes if mode not in known]
    if unknown:
        listing = ", ".join(known) if known else "none (fbrs.inference is not installed)"
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; available: {listing}")


def load_model_for_evaluation(spec: str | None, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model, description) for --model: a checkpoint path, a registered architecture (random weights,
    seeded), or None = the bundled default model (CheckpointError when it is missing); on `device`."""
    import torch

    from fbrs.models import build_model, list_models, load_default_model, load_model

    if spec is None:
        return load_default_model(device), {"kind": "default", "path": None}
    path = Path(spec)
    if path.is_file():
        return load_model(path, device), {"kind": "checkpoint", "path": str(path.resolve()), "sha256": _sha256(path)}
    if spec in list_models():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = build_model(spec).eval().to(device)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model, {"kind": "random-weights", "name": spec, "seed": RANDOM_WEIGHTS_SEED}
    raise ConfigError(
        f"--model {spec!r} is neither a checkpoint file nor a known architecture ({', '.join(list_models())})"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_zoom_in_target_size(dataset_name: str) -> int:
    """The original evaluation zooms to 600 px on DAVIS, 400 px elsewhere."""
    return 600 if dataset_name.upper().startswith("DAVIS") else 400


def predictor_options_for(settings: EvaluationSettings, dataset_name: str) -> dict[str, Any]:
    options = dict(settings.predictor_options)
    options["zoom_in"] = settings.zoom_in
    options["zoom_in_target_size"] = settings.zoom_in_target_size or default_zoom_in_target_size(dataset_name)
    return options


PredictorFactory = Callable[..., Any]


def default_predictor_factory(mode: str, model: Any, **options: Any) -> Any:
    from fbrs.inference import create_predictor

    return create_predictor(mode, model=model if mode_needs_model(mode) else None, **options)


# ----------------------------------------------------------------------------------------------------------
# Results files


def results_path(run_dir: Path, dataset: str, mode: str) -> Path:
    return Path(run_dir) / RESULTS_DIR / dataset / f"{mode}.jsonl"


def read_results(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a results file. A last line cut short by a kill is dropped (and, with repair=True,
    removed from the file); a malformed line elsewhere is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not line.endswith("\n"):
                raise ValueError("unterminated line")
        except ValueError:
            if number == len(lines):
                if repair:
                    write_text_atomic(path, "".join(lines[:-1]))
                break
            raise FbrsError(f"{path}:{number} is not a valid result line; delete it or the file to re-run") from None
        records.append(record)
    return records


class _ResultsWriter:
    """Appends result lines to the per-(dataset, mode) files, durably."""

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}

    def append(self, path: Path, record: dict[str, Any]) -> None:
        handle = self._handles.get(path)
        if handle is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._handles[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


# ----------------------------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class _Task:
    dataset: str  # Dataset.name
    mode: str
    index: int


class _WorkerContext:
    """What a worker needs to evaluate tasks: datasets, the model, the predictor factory."""

    def __init__(
        self,
        settings: EvaluationSettings,
        datasets: dict[str, Dataset],
        model: Any,
        factory: PredictorFactory,
        run_dir: Path,
    ) -> None:
        self.settings = settings
        self.datasets = datasets
        self.model = model
        self.factory = factory
        self.run_dir = run_dir

    def evaluate(self, task: _Task) -> dict[str, Any]:
        settings = self.settings
        dataset = self.datasets[task.dataset]
        sample = dataset[task.index]
        options, _ = accepted_options(task.mode, predictor_options_for(settings, dataset.name))
        if mode_needs_model(task.mode) and settings.backend_for(task.mode) == "onnx":
            options["backend"] = "onnx"
        predictor = self.factory(task.mode, self.model if mode_needs_model(task.mode) else None, **options)
        result = evaluate_sample(
            predictor,
            sample,
            max_clicks=settings.max_clicks,
            target_iou=settings.target_iou,
            pred_threshold=settings.pred_threshold,
            stop_at_target=settings.stop_at_target,
            # The oracle continues f-BRS; the other modes of an --oracle run (NoBRS beside it) get none.
            oracle=settings.oracle and task.mode.startswith("f-BRS") and hasattr(predictor, "oracle_refine"),
            index=task.index,
        )
        if settings.save_masks and result.final_mask is not None:
            save_png_atomic(
                mask_path(self.run_dir, task.dataset, task.mode, sample.name), result.final_mask * np.uint8(255)
            )
        return result.to_record()


def mask_path(run_dir: Path, dataset: str, mode: str, sample_name: str) -> Path:
    return Path(run_dir) / "masks" / dataset / mode / f"{sample_name}.png"


_WORKER: _WorkerContext | None = None


def _init_worker(payload: bytes, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    global _WORKER
    _WORKER = pickle.loads(payload)


def _run_task(task: _Task) -> tuple[_Task, dict[str, Any]]:
    assert _WORKER is not None
    return task, _WORKER.evaluate(task)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------
# The run


def run_evaluation(
    settings: EvaluationSettings,
    run_dir: str | os.PathLike,
    *,
    progress: bool = True,
    predictor_factory: PredictorFactory | None = None,
    model: Any = None,
    interleave_modes: bool = False,
) -> dict[str, Any]:
    """Evaluate every (dataset, mode, sample) not yet in `run_dir`, then write the summary files.

    predictor_factory(mode, model, **options) -> predictor; default: fbrs.inference.create_predictor.
    model: an already loaded model to use instead of settings.model (its description is then "given").
    interleave_modes: evaluate sample by sample, every mode on a sample before the next sample (instead of
    mode by mode), so that a change of machine load during the run hits all modes alike (paper Table 4).
    Returns the summary (as written to summary.json).
    """
    from fbrs.evaluation.reports import write_run_reports

    settings.validate()
    if settings.oracle and not any(mode.startswith("f-BRS") for mode in settings.modes):
        raise ConfigError("--oracle continues f-BRS optimisation: include an f-BRS mode, e.g. --modes f-BRS-B")
    run_dir = Path(run_dir)
    factory = predictor_factory or default_predictor_factory
    if predictor_factory is None:
        check_modes(settings.modes)
    datasets = _load_datasets(settings)

    needs_model = any(mode_needs_model(mode) for mode in settings.modes)
    if model is not None:
        model_description: dict[str, Any] = {"kind": "given", "class": type(model).__name__}
    elif needs_model:
        model, model_description = load_model_for_evaluation(settings.model, settings.device)
    else:
        model_description = {"kind": "none"}
    _write_or_check_config(run_dir, settings, model_description, list(datasets))
    onnx_modes = [mode for mode in settings.modes if settings.backend_for(mode) == "onnx"]
    if predictor_factory is None and onnx_modes:
        from fbrs.inference.onnx_backend import export_for_modes

        # Here, once, before the workers would race to export the same files.
        export_for_modes(model, onnx_modes, notify=print if progress else None)

    tasks = _pending_tasks(run_dir, settings, datasets, interleave_modes)
    context = _WorkerContext(settings, datasets, model, factory, run_dir)
    writer = _ResultsWriter()
    try:
        _execute(tasks, context, writer, settings.jobs, progress)
    finally:
        writer.close()
    summary = write_run_reports(run_dir, datasets=datasets, context=context)
    return summary


def _load_datasets(settings: EvaluationSettings) -> dict[str, Dataset]:
    datasets: dict[str, Dataset] = {}
    for name in settings.datasets:
        dataset = load_dataset(name, root=settings.data_root)
        if dataset.name in datasets:
            raise ConfigError(
                f"two datasets are both named {dataset.name!r} ({datasets[dataset.name].root}, {dataset.root})"
            )
        datasets[dataset.name] = dataset
    return datasets


def _write_or_check_config(
    run_dir: Path, settings: EvaluationSettings, model_description: dict[str, Any], dataset_names: list[str]
) -> None:
    import platform

    config_path = run_dir / CONFIG_FILE
    identity = settings.identity()
    identity["model"] = model_description
    if config_path.is_file():
        try:
            previous = {**IDENTITY_DEFAULTS, **json.loads(config_path.read_text(encoding="utf-8"))["identity"]}
        except (ValueError, KeyError) as error:
            raise ConfigError(f"{config_path} is not a run config ({error}); use a new --out folder") from None
        differences = [
            f"{key}: {previous.get(key)!r} -> {identity[key]!r}"
            for key in identity
            if json.loads(json.dumps(identity[key])) != previous.get(key)
        ]
        if differences:
            raise ConfigError(
                f"{run_dir} holds a run with other settings ({'; '.join(differences)}); "
                f"use a new --out folder or the same settings to resume"
            )
    import torch

    content = {
        "identity": identity,
        "settings": dataclasses.asdict(settings),
        "dataset_names": dataset_names,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cores": usable_cores(),
        },
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(config_path, json.dumps(content, indent=1) + "\n")


def _pending_tasks(
    run_dir: Path, settings: EvaluationSettings, datasets: dict[str, Dataset], interleave_modes: bool = False
) -> list[_Task]:
    tasks = []
    for dataset in datasets.values():
        count = len(dataset) if settings.limit is None else min(settings.limit, len(dataset))
        names = dataset.sample_names()
        for mode in settings.modes:
            done = {record["sample"] for record in read_results(results_path(run_dir, dataset.name, mode), repair=True)}
            tasks += [_Task(dataset.name, mode, index) for index in range(count) if names[index] not in done]
    if interleave_modes:
        dataset_order, mode_order = list(datasets), list(settings.modes)
        tasks.sort(key=lambda t: (dataset_order.index(t.dataset), t.index, mode_order.index(t.mode)))
    return tasks


def _execute(tasks: list[_Task], context: _WorkerContext, writer: _ResultsWriter, jobs: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="sample", disable=not progress or not tasks, dynamic_ncols=True)

    def record_result(task: _Task, record: dict[str, Any]) -> None:
        writer.append(results_path(context.run_dir, task.dataset, task.mode), record)
        bar.set_postfix_str(f"{task.dataset} {task.mode}", refresh=False)
        bar.update(1)

    try:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                record_result(task, context.evaluate(task))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, usable_cores() // jobs)
        payload = pickle.dumps(context)
        # spawn, not fork: forking a process that already ran torch threads can deadlock.
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(payload, threads),
        ) as pool:
            futures = [pool.submit(_run_task, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    record_result(*future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()


def load_run_records(run_dir: str | os.PathLike) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{dataset: {mode: [records]}} of a run folder, records in file order."""
    root = Path(run_dir) / RESULTS_DIR
    if not root.is_dir():
        raise FbrsError(f"{run_dir} is not an evaluation run: {root} is missing")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(dataset_dir.glob("*.jsonl")):
            runs.setdefault(dataset_dir.name, {})[path.stem] = read_results(path)
    return runs


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FbrsError(f"{run_dir} is not an evaluation run: {path} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = [
    "EvaluationSettings",
    "SampleResult",
    "evaluate_sample",
    "load_run_records",
    "read_run_config",
    "replay_clicks",
    "run_evaluation",
]
