"""`fbrs evaluate --modes SAM` end to end with the bundled SAM-family model on a one-image dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fbrs.cli import main


def test_fbrs_evaluate_runs_the_sam_family(tmp_path: Path):
    rows, cols = np.mgrid[0:80, 0:112]
    mask = ((rows - 40) / 22.0) ** 2 + ((cols - 50) / 30.0) ** 2 < 1
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (80, 112, 3), dtype=np.uint8)
    image[mask] = (220, 40, 40)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "images" / "ellipse.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "data" / "masks" / "ellipse.png")
    run = tmp_path / "run"
    arguments = ["evaluate", "--datasets", str(tmp_path / "data"), "--modes", "SAM,SAM-f-BRS-upscaled",
                 "--out", str(run), "--max-clicks", "3", "--gallery", "0", "--no-progress"]
    assert main(arguments) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {entry["mode"] for entry in summary["results"]} == {"SAM", "SAM-f-BRS-upscaled"}
    for mode in ("SAM", "SAM-f-BRS-upscaled"):
        (record,) = [json.loads(line) for line in (run / "results" / "data" / f"{mode}.jsonl").read_text().splitlines()]
        assert record["ious"][0] > 0.8  # a red ellipse on dark noise: one click finds it


def test_sam_modes_take_their_predictor_options_and_evaluate_names_the_others(tmp_path: Path, capsys, monkeypatch):
    import fbrs.models.sam.model as sam_model
    from fbrs.inference import accepted_options
    from fbrs.inference.sam_predictor import SamPredictor
    from fbrs.models.sam.tiny import build_tiny_sam_model

    options = {"lbfgs_max_evaluations": 3, "with_flip": False, "clicks_limit": 4}
    taken = ({"lbfgs_max_evaluations": 3}, ["with_flip", "clicks_limit"])
    assert accepted_options("SAM-f-BRS-upscaled", options) == taken
    assert accepted_options("f-BRS-B", options) == (options, [])
    assert accepted_options("graphcut", options) == ({}, list(options))

    monkeypatch.setattr(sam_model, "_DEFAULT", build_tiny_sam_model(seed=0))
    built = []
    original_init = SamPredictor.__init__

    def recording_init(self, *args, **kwargs):
        built.append(kwargs.get("lbfgs_max_evaluations"))
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "__init__", recording_init)
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "data" / "images" / "a.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "data" / "masks" / "a.png")
    arguments = ["evaluate", "--datasets", str(tmp_path / "data"), "--modes", "SAM-f-BRS-upscaled",
                 "--out", str(tmp_path / "run"), "--max-clicks", "2", "--gallery", "0", "--no-progress",
                 "--lbfgs-max-evaluations", "3", "--no-flip"]
    assert main(arguments) == 0
    assert built == [3]
    assert "note: mode SAM-f-BRS-upscaled ignores --no-flip" in capsys.readouterr().out
