"""`fbrs evaluate` / `fbrs report` end to end on a tiny synthetic dataset with the tiny_test model:
outputs, resume after --limit and after a kill, --jobs 2 equals --jobs 1, config checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbrs.cli import main
from fbrs.errors import CheckpointError, ConfigError
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import collapses, compute_noc, noc_thresholds
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.evaluation.run_folder import load_run_records, results_path

MODES = "NoBRS,f-BRS-B"


def make_dataset(root: Path, count: int) -> Path:
    """`count` 40x56 images with an elliptic object of varying position, generic images/ + masks/ layout."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, cols = np.mgrid[0:40, 0:56]
    for index in range(count):
        mask = ((rows - 20) / 11.0) ** 2 + ((cols - 22 - index) / 14.0) ** 2 < 1
        image = rng.integers(0, 80, (40, 56, 3), dtype=np.uint8)
        image[mask] += 140
        Image.fromarray(image).save(root / "images" / f"img{index:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{index:02d}.png")
    return root


def evaluate_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--model",
        "tiny_test",
        "--datasets",
        str(dataset),
        "--modes",
        MODES,
        "--max-clicks",
        "4",
        "--no-zoom-in",
        "--threads",
        "1",
        "--gallery",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def result_lines(run: Path, dataset: str, mode: str) -> list[str]:
    return results_path(run, dataset, mode).read_text().splitlines()


def test_evaluate_limit_then_resume_writes_all_outputs(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "synth", 3)
    run = tmp_path / "runs" / "a"
    assert main(evaluate_args(dataset, run, "--limit", "2", "--save-masks")) == 0
    first = {mode: result_lines(run, "synth", mode) for mode in MODES.split(",")}
    assert all(len(lines) == 2 for lines in first.values())

    assert main(evaluate_args(dataset, run, "--save-masks")) == 0
    for mode in MODES.split(","):
        lines = result_lines(run, "synth", mode)
        assert lines[:2] == first[mode]  # finished samples were not evaluated again (times would differ)
        assert sorted(json.loads(line)["sample"] for line in lines) == ["img00", "img01", "img02"]

    records = load_run_records(run)["synth"]
    summary = json.loads((run / "summary.json").read_text())
    for entry in summary["results"]:
        curves = [record["ious"] for record in records[entry["mode"]]]
        nocs, over_max = compute_noc(curves, noc_thresholds(0.9), max_clicks=4)
        assert [entry["noc"][t] for t in ("80", "85", "90")] == nocs
        assert entry["over_max"]["90"] == over_max[2]
        assert entry["collapses"] == sum(collapses(curve) for curve in curves)
        assert entry["samples"] == entry["expected_samples"] == 3
        assert len(entry["miou_per_click"]) == 4
        assert entry["spc"] > 0
    for record in records["NoBRS"]:
        assert 1 <= len(record["clicks"]) <= 4 and len(record["ious"]) == len(record["click_seconds"])

    markdown = (run / "summary.md").read_text()
    assert "| Method | synth NoC@85 | synth NoC@90 |" in markdown and "| f-BRS-B |" in markdown
    assert "| Method | synth NoC@90 | synth #>=4 | synth collapses | synth SPC, s |" in markdown
    csv_lines = (run / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,mode,samples") and len(csv_lines) == 3
    for png in [
        run / "miou_vs_clicks.png",
        run / "gallery" / "synth__NoBRS.png",
        run / "gallery" / "synth__f-BRS-B.png",
    ]:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100
    saved = np.asarray(Image.open(run / "masks" / "synth" / "NoBRS" / "img01.png"))
    assert saved.shape == (40, 56) and set(np.unique(saved)) <= {0, 255}
    assert "synth NoC@90" in capsys.readouterr().out


def test_resume_after_kill(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 12)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fbrs.cli", *evaluate_args(dataset, run, "--no-early-stop", "--gallery", "0")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_file = results_path(run, "synth", "NoBRS")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if first_file.is_file() and first_file.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    before = first_file.read_text().splitlines(keepends=True)
    complete = [line for line in before if line.endswith("\n")]
    assert 1 <= len(complete) < 12
    # A kill in the middle of a write leaves a cut line; make sure there is one.
    with open(first_file, "a") as handle:
        handle.write('{"sample":"img11","ind')

    assert main(evaluate_args(dataset, run, "--no-early-stop", "--gallery", "0")) == 0
    after = first_file.read_text().splitlines(keepends=True)
    assert after[: len(complete)] == complete
    names = [json.loads(line)["sample"] for line in after]
    assert sorted(names) == [f"img{i:02d}" for i in range(12)]
    assert all(len(json.loads(line)["ious"]) == 4 for line in after)


def test_jobs_2_gives_the_same_clicks_and_ious_as_jobs_1(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 3)
    assert main(evaluate_args(dataset, tmp_path / "one", "--gallery", "0")) == 0
    assert main(evaluate_args(dataset, tmp_path / "two", "--gallery", "0", "--jobs", "2")) == 0
    for mode in MODES.split(","):
        one = {r["sample"]: r for r in load_run_records(tmp_path / "one")["synth"][mode]}
        two = {r["sample"]: r for r in load_run_records(tmp_path / "two")["synth"][mode]}
        assert one.keys() == two.keys()
        for name in one:
            assert (one[name]["clicks"], one[name]["ious"]) == (two[name]["clicks"], two[name]["ious"])


def test_resume_with_other_settings_is_refused(tmp_path):
    dataset = make_dataset(tmp_path / "synth", 1)
    run = tmp_path / "run"
    assert main(evaluate_args(dataset, run, "--gallery", "0")) == 0
    with pytest.raises(ConfigError, match="max_clicks: 4 -> 5"):
        from fbrs.evaluation.runner import run_evaluation
        from fbrs.evaluation.settings import EvaluationSettings

        settings = EvaluationSettings([str(dataset)], ["NoBRS"], "tiny_test", max_clicks=5, zoom_in=False)
        run_evaluation(settings, run, progress=False)
    assert main([*evaluate_args(dataset, run), "--max-clicks", "5"]) == 2  # the CLI prints the message


def test_report_puts_runs_side_by_side(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "synth", 2)
    for name, extra in (("base", ()), ("noflip", ("--no-flip",))):
        assert main(evaluate_args(dataset, tmp_path / name, "--gallery", "0", *extra)) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "base"), str(tmp_path / "noflip"), "--out", str(tmp_path / "cmp.md")]) == 0
    table = (tmp_path / "cmp.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| noflip")]
    assert len(rows) == 4  # 2 runs x 2 modes
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    nobrs = next(e for e in summary["results"] if e["mode"] == "NoBRS")
    assert (
        f"| {nobrs['noc']['85']:.2f} | {nobrs['noc']['90']:.2f} | {nobrs['over_max']['90']} | {nobrs['collapses']} |"
        in rows[0]
    )
    assert main(["report", str(tmp_path / "synth")]) == 2


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    from fbrs.evaluation.runner import run_evaluation
    from fbrs.evaluation.settings import EvaluationSettings

    monkeypatch.setenv("FBRS_DEFAULT_MODEL", str(tmp_path / "absent.safetensors"))
    dataset = make_dataset(tmp_path / "synth", 1)
    with pytest.raises(CheckpointError, match="absent.safetensors"):
        run_evaluation(EvaluationSettings([str(dataset)], ["NoBRS"]), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="unknown mode"):
        run_evaluation(EvaluationSettings([str(dataset)], ["f-BRS-Z"]), tmp_path / "run", progress=False)


class _OraclePredictor:
    """Predicts the left half of the image; its oracle hook returns the ground truth it is given."""

    def set_image(self, image):
        self.shape = image.shape[:2]

    def add_click(self, y, x, positive):
        probs = np.zeros(self.shape, np.float32)
        probs[:, : self.shape[1] // 2] = 1.0
        return probs

    def oracle_refine(self, gt_mask, ignore_mask):
        return gt_mask.astype(np.float32)


def test_oracle_hook_reports_the_iou_after_refinement():
    mask = np.zeros((10, 10), bool)
    mask[:, :3] = True
    sample = Sample(np.zeros((10, 10, 3), np.uint8), mask, np.zeros_like(mask), "s")
    result = evaluate_sample(_OraclePredictor(), sample, max_clicks=3, oracle=True)
    assert result.ious == [pytest.approx(0.6)] * 3
    assert result.oracle_iou == 1.0
    assert result.to_record()["oracle_iou"] == 1.0


def test_predictor_budget_options_reach_the_predictor_and_are_recorded(tmp_path, monkeypatch):
    import fbrs.inference

    built = []
    original = fbrs.inference.create_predictor

    def recording_factory(mode, model=None, **options):
        predictor = original(mode, model=model, **options)
        built.append((options.get("lbfgs_max_evaluations"), options.get("max_image_side")))
        return predictor

    monkeypatch.setattr(fbrs.inference, "create_predictor", recording_factory)
    dataset = make_dataset(tmp_path / "synth", 1)
    run = tmp_path / "run"
    extra = ("--gallery", "0", "--lbfgs-max-evaluations", "5", "--max-image-side", "32")
    assert main(evaluate_args(dataset, run, *extra)) == 0
    assert built and all(options == (5, 32) for options in built)
    recorded = json.loads((run / "config.json").read_text())["identity"]["predictor_options"]
    assert recorded["lbfgs_max_evaluations"] == 5 and recorded["max_image_side"] == 32
    assert main(evaluate_args(dataset, tmp_path / "bad", "--lbfgs-max-evaluations", "0")) == 2
    assert main(evaluate_args(dataset, tmp_path / "bad2", "--max-image-side", "8")) == 2


def test_onnx_backend_runs_the_modes_it_can_and_is_recorded(tmp_path, monkeypatch):
    import fbrs.inference

    built = []
    original = fbrs.inference.create_predictor

    def recording_factory(mode, model=None, **options):
        predictor = original(mode, model=model, **options)
        built.append((mode, predictor.backend))
        return predictor

    monkeypatch.setattr(fbrs.inference, "create_predictor", recording_factory)
    dataset = make_dataset(tmp_path / "synth", 2)
    modes = ("--modes", "NoBRS,f-BRS-B,RGB-BRS", "--gallery", "0")
    assert main(evaluate_args(dataset, tmp_path / "torch", *modes)) == 0
    built.clear()
    assert main(evaluate_args(dataset, tmp_path / "onnx", *modes, "--backend", "onnx")) == 0
    assert set(built) == {("NoBRS", "onnx"), ("f-BRS-B", "onnx"), ("RGB-BRS", "torch")}
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["identity"]["backend"] == "onnx"
    for mode in ("NoBRS", "f-BRS-B"):
        with_torch = load_run_records(tmp_path / "torch")["synth"][mode]
        with_onnx = load_run_records(tmp_path / "onnx")["synth"][mode]
        for a, b in zip(with_torch, with_onnx, strict=True):
            assert a["clicks"] == b["clicks"]
            np.testing.assert_allclose(a["ious"], b["ious"], atol=1e-3)
    # A run written before the backend was recorded resumes as the torch run it was.
    config_path = tmp_path / "torch" / "config.json"
    config = json.loads(config_path.read_text())
    del config["identity"]["backend"]
    config_path.write_text(json.dumps(config))
    assert main(evaluate_args(dataset, tmp_path / "torch", *modes)) == 0
    assert main(evaluate_args(dataset, tmp_path / "torch", *modes, "--backend", "onnx")) == 2


REUSE_MODES = ["NoBRS", "f-BRS-B", "RGB-BRS", "SAM-f-BRS-upscaled", "graphcut"]


@pytest.mark.parametrize("mode", REUSE_MODES)
def test_a_reused_predictor_gives_what_fresh_predictors_give(tmp_path, monkeypatch, mode):
    """The runner builds one predictor per (mode, dataset) and reuses it from sample to sample: the records
    must equal those of a fresh predictor per sample (clicks, every IoU, the oracle's IoU, the final mask)."""
    import fbrs.models.sam.model as sam_model
    from fbrs.evaluation.datasets import load_dataset
    from fbrs.evaluation.predictors import default_predictor_factory, load_model_for_evaluation
    from fbrs.evaluation.runner import SampleEvaluator, Task
    from fbrs.evaluation.settings import EvaluationSettings
    from fbrs.models.sam.tiny import build_tiny_sam_model

    monkeypatch.setattr(sam_model, "_DEFAULT", build_tiny_sam_model(seed=0))
    dataset = load_dataset(str(make_dataset(tmp_path / "synth", 3)))
    settings = EvaluationSettings(
        [str(dataset.root)], [mode], "tiny_test", max_clicks=4, stop_at_target=False, oracle=mode == "f-BRS-B",
        zoom_in_target_size=32, save_masks=True,
    )
    model, _ = load_model_for_evaluation("tiny_test")
    built = []

    def counting_factory(mode, model, **options):
        built.append(mode)
        return default_predictor_factory(mode, model, **options)

    evaluator = SampleEvaluator(settings, {dataset.name: dataset}, model, counting_factory, tmp_path / "run")
    reused = [evaluator.evaluate(Task(dataset.name, mode, index)) for index in range(3)]
    assert built == [mode]  # one predictor for the three samples
    for index, record in enumerate(reused):
        predictor = settings.predictor_for(mode, dataset.name, model)
        fresh = evaluate_sample(
            predictor, dataset[index], max_clicks=4, stop_at_target=False,
            oracle=settings.uses_oracle(mode, predictor), index=index,
        )
        assert (record["clicks"], record["ious"]) == (fresh.to_record()["clicks"], fresh.ious)
        assert record.get("oracle_iou") == fresh.oracle_iou
        saved = np.asarray(Image.open(tmp_path / "run" / "masks" / "synth" / mode / f"img{index:02d}.png")) > 127
        np.testing.assert_array_equal(saved, fresh.final_mask)
    if mode == "f-BRS-B":
        assert all(record["oracle_iou"] is not None for record in reused)


def test_one_recipe_gives_every_mode_its_options():
    """EvaluationSettings.predictor_for's options: the user's options and Zoom-In for DeepLab modes (600 px
    on DAVIS, as the original), the SAM family only the options it takes, the baselines none; the ONNX
    backend only where ONNX Runtime can run the mode."""
    from fbrs.evaluation.bench import BenchSettings
    from fbrs.evaluation.settings import EvaluationSettings

    given = {"lbfgs_max_evaluations": 5, "with_flip": False}
    settings = EvaluationSettings(["GrabCut", "DAVIS"], ["NoBRS"], predictor_options=given, backend="onnx")
    recipe = settings.predictor_recipe
    zoom = {"zoom_in": True, "zoom_in_target_size": 400}
    assert recipe.options_for("f-BRS-B", "GrabCut") == {**given, **zoom, "backend": "onnx"}
    assert recipe.options_for("f-BRS-B", "DAVIS")["zoom_in_target_size"] == 600
    assert recipe.options_for("RGB-BRS", "Berkeley") == {**given, **zoom}  # stays in torch
    assert recipe.options_for("SAM-f-BRS-upscaled", "DAVIS") == {"lbfgs_max_evaluations": 5}
    assert recipe.options_for("SAM-zoom", "DAVIS") == {"lbfgs_max_evaluations": 5, "zoom_in": True}
    assert recipe.options_for("graphcut", "GrabCut") == {}
    sized = EvaluationSettings(["DAVIS"], ["NoBRS"], zoom_in_target_size=320).predictor_recipe
    assert sized.options_for("NoBRS", "DAVIS") == {"zoom_in": True, "zoom_in_target_size": 320}
    bench = BenchSettings(with_flip=False, backend="onnx").predictor_recipe
    assert bench.options_for("NoBRS") == {"with_flip": False, "zoom_in": False, "zoom_in_target_size": 400,
                                          "backend": "onnx"}
