"""`fbrs study NAME`: every study's plan builds; studies run end to end on a tiny synthetic dataset with the
tiny_test model and write their Markdown section; re-running resumes (finished runs are not redone) and
keeps the hand-written notes; Table 4's modes are interleaved per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbrs.cli import main
from fbrs.errors import ConfigError
from fbrs.evaluation.run_folder import results_path
from fbrs.evaluation.runner import _pending_tasks
from fbrs.evaluation.settings import EvaluationSettings
from fbrs.studies.paper import (
    STUDIES,
    StudyOptions,
    evaluation_settings,
    get_study,
    parse_subset,
    write_section,
)
from tests.test_evaluation_runner import make_dataset


def study_args(name: str, dataset: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "study",
        name,
        "--model",
        "tiny_test",
        "--datasets",
        str(dataset),
        "--max-clicks",
        "3",
        "--out",
        str(tmp_path / "studies"),
        "--doc",
        str(tmp_path / "docs" / "paper_studies.md"),
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_plan_builds(name, tmp_path):
    study = get_study(name)
    options = StudyOptions(out=tmp_path, subset={"Berkeley": 30, "*": 5}, clicks_limits=(1, 4, 8))
    runs = study.plan(study, options)
    assert runs and len({run.name for run in runs}) == len(runs)
    assert {run.dataset for run in runs} == set(study.datasets)
    for run in runs:
        settings = evaluation_settings(run, options)
        settings.validate()
        assert settings.limit == (30 if run.dataset == "Berkeley" else 5)
        assert settings.gallery_size == 0 and settings.datasets == [run.dataset]
    if name == "table4-modes":
        assert all(run.interleave_modes for run in runs) and len(runs[0].modes) == 6
    if name == "table2-convergence":
        assert all(run.max_clicks == 100 for run in runs)
    if name == "figure5-clicks-limit":
        assert sorted({dict(run.options)["clicks_limit"] for run in runs}) == [1, 4, 8]
    if name == "appendix-b-oracle":
        assert all(run.oracle and not run.stop_at_target for run in runs)
    if name == "appendix-e-nfl-bce":
        assert {Path(run.model).parent.name for run in runs} == {"train_nfl", "train_bce"}
    assert f"fbrs study {name}" in options.command_line(name)


def test_parse_subset():
    assert parse_subset("30") == {"*": 30}
    assert parse_subset("Berkeley=30,DAVIS=20") == {"Berkeley": 30, "DAVIS": 20}
    with pytest.raises(ConfigError, match="neither N"):
        parse_subset("Berkeley=all")


def test_table1_end_to_end_resume_and_notes(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 3)
    doc = tmp_path / "docs" / "paper_studies.md"
    assert main(study_args("table1-zoom-in", dataset, tmp_path, "--subset", "2")) == 0
    text = doc.read_text()
    assert text.startswith("# The paper's experiments, re-run")
    assert "<!-- study: table1-zoom-in -->" in text and "<!-- /study: table1-zoom-in -->" in text
    assert "| ours NoBRS |" in text and "| paper ResNet-50 f-BRS-B |" in text
    assert "synth first 2 of 3" in text and "fbrs study table1-zoom-in" in text and "Unfinished" not in text

    folder = tmp_path / "studies" / "table1-zoom-in"
    files = {
        (variant, mode): results_path(folder / f"{variant}_synth", "synth", mode)
        for variant in ("zoom-in", "no-zoom-in")
        for mode in ("NoBRS", "f-BRS-B")
    }
    first = {key: path.read_text() for key, path in files.items()}
    assert all(len(content.splitlines()) == 2 for content in first.values())

    # A hand-written note survives regeneration; a finished study is not evaluated again.
    edited = text.replace("Our model is the bundled", "HAND-WRITTEN. Our model is the bundled")
    doc.write_text(edited)
    assert main(study_args("table1-zoom-in", dataset, tmp_path, "--subset", "2")) == 0
    assert {key: path.read_text() for key, path in files.items()} == first
    assert "HAND-WRITTEN." in doc.read_text()

    # A larger subset continues: only the third sample is evaluated.
    assert main(study_args("table1-zoom-in", dataset, tmp_path)) == 0
    for key, path in files.items():
        lines = path.read_text().splitlines()
        assert lines[:2] == first[key].splitlines() and len(lines) == 3
    assert "synth all 3" in doc.read_text()

    # A smaller subset is summarised over its first N only, though the folders hold more.
    assert main(study_args("table1-zoom-in", dataset, tmp_path, "--subset", "1", "--report-only")) == 0
    assert "synth first 1 of 3" in doc.read_text() and "Unfinished" not in doc.read_text()


def test_report_only_marks_unfinished_runs_and_sections_keep_their_order(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 2)
    doc = tmp_path / "docs" / "paper_studies.md"
    assert main(study_args("table2-convergence", dataset, tmp_path, "--report-only")) == 0
    assert "**Unfinished**" in doc.read_text() and "100-clicks_synth (not started)" in doc.read_text()
    assert main(study_args("table1-zoom-in", dataset, tmp_path, "--report-only")) == 0
    text = doc.read_text()
    assert text.index("<!-- study: table1-zoom-in -->") < text.index("<!-- study: table2-convergence -->")
    write_section(doc, "table1-zoom-in", "new body\n", "note")
    assert doc.read_text().count("<!-- study: table1-zoom-in -->") == 1 and "new body" in doc.read_text()


def test_table4_interleaves_modes_per_image(tmp_path):
    from fbrs.evaluation.datasets import load_dataset

    dataset = make_dataset(tmp_path / "synth", 3)
    settings = EvaluationSettings(datasets=[str(dataset)], modes=["NoBRS", "f-BRS-B", "f-BRS-C"])
    datasets = {"synth": load_dataset(str(dataset))}
    plain = [(t.index, t.mode) for t in _pending_tasks(tmp_path, settings, datasets)]
    interleaved = [(t.index, t.mode) for t in _pending_tasks(tmp_path, settings, datasets, interleave_modes=True)]
    assert plain[:3] == [(0, "NoBRS"), (1, "NoBRS"), (2, "NoBRS")]
    assert interleaved[:4] == [(0, "NoBRS"), (0, "f-BRS-B"), (0, "f-BRS-C"), (1, "NoBRS")]

    args = study_args("table4-modes", dataset, tmp_path, "--modes", "NoBRS,f-BRS-B", "--subset", "2")
    assert main(args) == 0
    text = (tmp_path / "docs" / "paper_studies.md").read_text()
    assert "**synth**" in text and "SPC / NoBRS" in text and "| f-BRS-B |" in text


def test_figure5_and_oracle_write_plots(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 2)
    doc = tmp_path / "docs" / "paper_studies.md"
    extra = ("--modes", "f-BRS-B", "--subset", "1")
    assert main(study_args("figure5-clicks-limit", dataset, tmp_path, *extra, "--clicks-limits", "1-2")) == 0
    oracle_args = study_args("appendix-b-oracle", dataset, tmp_path, "--modes", "NoBRS,f-BRS-B", "--subset", "1")
    assert main(oracle_args) == 0  # NoBRS beside f-BRS-B in an oracle run: only f-BRS-B gets the oracle
    text = doc.read_text()
    assert "| synth | f-BRS-B |" in text and "best limit (paper)" in text
    assert "](paper_studies/figure5-clicks-limit.png)" in text and "](paper_studies/appendix-b-oracle.png)" in text
    for name in ("figure5-clicks-limit", "appendix-b-oracle"):
        with Image.open(tmp_path / "docs" / "paper_studies" / f"{name}.png") as image:
            assert image.format == "PNG"
    oracle_run = tmp_path / "studies" / "appendix-b-oracle" / "oracle_synth"
    record = json.loads(results_path(oracle_run, "synth", "f-BRS-B").read_text().splitlines()[0])
    assert len(record["ious"]) == 3 and 0.0 <= record["oracle_iou"] <= 1.0  # no early stop: every click made
    assert "oracle_iou" not in json.loads(results_path(oracle_run, "synth", "NoBRS").read_text().splitlines()[0])


def _training_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, cols = np.mgrid[0:96, 0:96]
    for index in range(count):
        mask = ((rows - 40 - index) / 25.0) ** 2 + ((cols - 50) / 30.0) ** 2 < 1
        image = rng.integers(0, 90, (96, 96, 3), dtype=np.uint8)
        image[mask] += 120
        Image.fromarray(image).save(root / "images" / f"t{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"t{index}.png")
    return root


def test_nfl_bce_trains_two_models_with_the_same_budget(tmp_path, tiny_model):
    import fbrs

    dataset = make_dataset(tmp_path / "synth", 1)
    start = tmp_path / "start.safetensors"
    fbrs.save_model(tiny_model, start)
    training = _training_folder(tmp_path / "train_set", 8)
    args = study_args("appendix-e-nfl-bce", dataset, tmp_path, "--modes", "NoBRS", "--train-steps", "2")
    args[args.index("tiny_test")] = str(start)
    args += ["--train-config", "configs/tiny_test.toml"]
    args += ["--train-set", f'data.sources=[{{path="{training.as_posix()}", kind="folder"}}]']
    args += ["--train-set", "data.validation_fraction=0.25"]
    assert main(args) == 0
    folder = tmp_path / "studies" / "appendix-e-nfl-bce"
    for loss in ("nfl", "bce"):
        assert (folder / f"train_{loss}" / "last.safetensors").is_file()
        config = json.loads((folder / f"{loss}_synth" / "config.json").read_text())
        assert config["identity"]["model"]["path"].endswith(f"train_{loss}/last.safetensors")
    text = (tmp_path / "docs" / "paper_studies.md").read_text()
    assert "NFL: 2 steps" in text and "BCE: 2 steps" in text and "| paper ResNet-34 CEL | f-BRS-B |" in text
