"""The run folder of `fbrs evaluate` (`--out runs/NAME`): its identity and its results files.

Layout:
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
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from fbrs.errors import ConfigError, FbrsError
from fbrs.evaluation.settings import EvaluationSettings
from fbrs.io_utils import write_text_atomic

RESULTS_DIR = "results"
CONFIG_FILE = "config.json"
#: The value of identity fields that runs written before the field existed had.
IDENTITY_DEFAULTS = {"backend": "torch"}


def results_path(run_dir: str | os.PathLike, dataset: str, mode: str) -> Path:
    return Path(run_dir) / RESULTS_DIR / dataset / f"{mode}.jsonl"


def mask_path(run_dir: str | os.PathLike, dataset: str, mode: str, sample_name: str) -> Path:
    return Path(run_dir) / "masks" / dataset / mode / f"{sample_name}.png"


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


def finished_samples(run_dir: str | os.PathLike, dataset: str, mode: str) -> set[str]:
    """Names of the samples of (dataset, mode) the run folder holds; a line cut short by a kill is removed."""
    return {record["sample"] for record in read_results(results_path(run_dir, dataset, mode), repair=True)}


class ResultsWriter:
    """Appends result lines to the per-(dataset, mode) files of a run folder, durably."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._handles: dict[Path, Any] = {}

    def append(self, dataset: str, mode: str, record: dict[str, Any]) -> None:
        path = results_path(self.run_dir, dataset, mode)
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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def write_or_check_config(
    run_dir: Path, settings: EvaluationSettings, model_description: dict[str, Any], dataset_names: list[str]
) -> None:
    """Write config.json; when the folder already holds a run, first check it has the same identity
    (ConfigError naming every setting that differs)."""
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
    "CONFIG_FILE",
    "RESULTS_DIR",
    "ResultsWriter",
    "finished_samples",
    "load_run_records",
    "mask_path",
    "read_results",
    "read_run_config",
    "results_path",
    "usable_cores",
    "write_or_check_config",
]
