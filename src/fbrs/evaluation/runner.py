"""`fbrs evaluate`: the standard protocol over datasets x modes, resumable, optionally in parallel.

This module orchestrates; the parts live beside it: settings (EvaluationSettings, the predictor of each
(mode, dataset)), protocol (one sample), run_folder (config.json, the JSONL results, resume), summary
(metrics), reports and plots (the files written at the end). The run folder's layout is in run_folder.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import ConfigError
from fbrs.evaluation.datasets import Dataset, load_dataset
from fbrs.evaluation.predictors import (
    PredictorFactory,
    available_modes,
    check_modes,
    load_model_for_evaluation,
    mode_needs_model,
)
from fbrs.evaluation.protocol import SampleResult, evaluate_sample, replay_clicks
from fbrs.evaluation.reports import write_run_reports
from fbrs.evaluation.run_folder import (
    ResultsWriter,
    finished_samples,
    load_run_records,
    mask_path,
    read_run_config,
    results_path,
    usable_cores,
    write_or_check_config,
)
from fbrs.evaluation.settings import EvaluationSettings
from fbrs.io_utils import save_png_atomic


@dataclass(frozen=True)
class Task:
    """One sample of one (dataset, mode) to evaluate."""

    dataset: str  # Dataset.name
    mode: str
    index: int


class SampleEvaluator:
    """Evaluates tasks in one process: the datasets, the model, and one predictor per (mode, dataset).

    A predictor is built on its first task (`EvaluationSettings.predictor_for`) and reused for every later
    sample of that (mode, dataset): set_image forgets the previous sample, so the results equal those of a
    fresh predictor per sample (tests/test_evaluation_runner.py checks it), without rebuilding one per
    sample (an ONNX-backed predictor fingerprints the model's weights when it is built). A worker process
    gets a pickled copy and builds its own predictors."""

    def __init__(
        self,
        settings: EvaluationSettings,
        datasets: dict[str, Dataset],
        model: Any,
        factory: PredictorFactory | None,
        run_dir: Path,
    ) -> None:
        self.settings = settings
        self.datasets = datasets
        self.model = model
        self.factory = factory
        self.run_dir = run_dir
        self._predictors: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_predictors": {}}  # predictors stay in the process that built them

    def predictor(self, mode: str, dataset: str) -> Any:
        """The predictor of `mode` on dataset `dataset` (its name), built once per process."""
        key = (mode, dataset)
        if key not in self._predictors:
            self._predictors[key] = self.settings.predictor_for(mode, dataset, self.model, self.factory)
        return self._predictors[key]

    def evaluate(self, task: Task) -> dict[str, Any]:
        """Run the protocol on the task's sample; returns its result record (and saves its mask if asked)."""
        settings = self.settings
        sample = self.datasets[task.dataset][task.index]
        predictor = self.predictor(task.mode, task.dataset)
        result = evaluate_sample(
            predictor,
            sample,
            max_clicks=settings.max_clicks,
            target_iou=settings.target_iou,
            pred_threshold=settings.pred_threshold,
            stop_at_target=settings.stop_at_target,
            oracle=settings.uses_oracle(task.mode, predictor),
            index=task.index,
        )
        if settings.save_masks and result.final_mask is not None:
            save_png_atomic(
                mask_path(self.run_dir, task.dataset, task.mode, sample.name), result.final_mask * np.uint8(255)
            )
        return result.to_record()


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
    settings.validate()
    run_dir = Path(run_dir)
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
    write_or_check_config(run_dir, settings, model_description, list(datasets))
    onnx_modes = [mode for mode in settings.modes if settings.backend_for(mode) == "onnx"]
    if predictor_factory is None and onnx_modes:
        from fbrs.onnx import export_for_modes

        # Here, once, before the workers would race to export the same files.
        export_for_modes(model, onnx_modes, notify=print if progress else None)

    tasks = _pending_tasks(run_dir, settings, datasets, interleave_modes)
    evaluator = SampleEvaluator(settings, datasets, model, predictor_factory, run_dir)
    writer = ResultsWriter(run_dir)
    try:
        _execute(tasks, evaluator, writer, settings.jobs, progress)
    finally:
        writer.close()
    # The galleries replay with this process's predictors: those the scored samples were evaluated with.
    return write_run_reports(run_dir, datasets, settings, evaluator.predictor)


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


def _pending_tasks(
    run_dir: Path, settings: EvaluationSettings, datasets: dict[str, Dataset], interleave_modes: bool = False
) -> list[Task]:
    tasks = []
    for dataset in datasets.values():
        count = len(dataset) if settings.limit is None else min(settings.limit, len(dataset))
        names = dataset.sample_names()
        for mode in settings.modes:
            done = finished_samples(run_dir, dataset.name, mode)
            tasks += [Task(dataset.name, mode, index) for index in range(count) if names[index] not in done]
    if interleave_modes:
        dataset_order, mode_order = list(datasets), list(settings.modes)
        tasks.sort(key=lambda t: (dataset_order.index(t.dataset), t.index, mode_order.index(t.mode)))
    return tasks


# ----------------------------------------------------------------------------------------------------------
# Worker processes

# The SampleEvaluator of a worker process, set by _init_worker. A module global because ProcessPoolExecutor
# runs `initializer` and each task as separate calls of module-level functions, so state that outlives one
# task (the model, the datasets, the predictors built so far) has nowhere else to live in the worker. The
# alternatives cost more: passing the evaluator with every task pickles the model once per sample, and a
# pool of our own would re-implement what the executor does (a dead worker raises BrokenProcessPool,
# pending tasks are cancelled on an error). Only worker processes set it; the parent never reads it.
_PROCESS_EVALUATOR: SampleEvaluator | None = None


def _init_worker(payload: bytes, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    global _PROCESS_EVALUATOR
    _PROCESS_EVALUATOR = pickle.loads(payload)


def _run_task(task: Task) -> tuple[Task, dict[str, Any]]:
    assert _PROCESS_EVALUATOR is not None, "_run_task runs in a worker started with _init_worker"
    return task, _PROCESS_EVALUATOR.evaluate(task)


def _execute(tasks: list[Task], evaluator: SampleEvaluator, writer: ResultsWriter, jobs: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="sample", disable=not progress or not tasks, dynamic_ncols=True)

    def record_result(task: Task, record: dict[str, Any]) -> None:
        writer.append(task.dataset, task.mode, record)
        bar.set_postfix_str(f"{task.dataset} {task.mode}", refresh=False)
        bar.update(1)

    try:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                record_result(task, evaluator.evaluate(task))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, usable_cores() // jobs)
        payload = pickle.dumps(evaluator)
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


# The runner's public names before the split, importable from here as before (the goldens, benchmarks and
# users' scripts import them from fbrs.evaluation.runner); each is defined once, in the module named above.
__all__ = [
    "EvaluationSettings",
    "SampleEvaluator",
    "SampleResult",
    "Task",
    "available_modes",
    "evaluate_sample",
    "load_run_records",
    "read_run_config",
    "replay_clicks",
    "results_path",
    "run_evaluation",
]
