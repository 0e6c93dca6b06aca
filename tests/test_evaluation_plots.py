"""The figures of evaluation runs: drawn without touching matplotlib's global backend, and the worst-case
gallery shows the masks that were scored (replayed with the run's own backend and predictor options)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from fbrs.cli import main
from tests.test_evaluation_runner import evaluate_args, make_dataset

DRAW_IN_A_NOTEBOOK = """
import sys
import matplotlib
matplotlib.use("svg")  # the user's choice, before fbrs is imported
import fbrs.evaluation.plots as plots
import fbrs.evaluation.reports, fbrs.studies.paper  # noqa: F401
from fbrs.inference.clicks import Click
summary = {"datasets": ["d"], "max_clicks": 3,
           "results": [{"dataset": "d", "mode": "NoBRS", "miou_per_click": [0.5, 0.7, 0.8], "oracle_miou": 0.9}]}
plots.plot_miou_vs_clicks(summary, sys.argv[1] + "/curves.png")
image = (plots.np.arange(20 * 30 * 3) % 255).astype("uint8").reshape(20, 30, 3)
mask = plots.np.zeros((20, 30), bool)
mask[5:15, 5:20] = True
tile = {"image": image, "mask": mask, "gt": mask, "clicks": [Click(10, 10, True)], "caption": "s"}
plots.draw_gallery([tile], sys.argv[1] + "/gallery.png", title="t")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", DRAW_IN_A_NOTEBOOK, str(tmp_path)],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]  # backend unchanged, pyplot never imported
    for name in ("curves.png", "gallery.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_the_gallery_replays_the_masks_that_were_scored(tmp_path, monkeypatch):
    """An --backend onnx run's gallery, drawn from replayed clicks (no --save-masks files), shows exactly
    the masks that were scored, with predictors built with the scoring run's backend and options."""
    import fbrs.evaluation.plots as plots
    import fbrs.inference

    built = []
    original = fbrs.inference.create_predictor

    def recording_factory(mode, model=None, **options):
        predictor = original(mode, model=model, **options)
        built.append((mode, predictor.backend, tuple(sorted(options.items()))))
        return predictor

    monkeypatch.setattr(fbrs.inference, "create_predictor", recording_factory)
    dataset = make_dataset(tmp_path / "synth", 2)
    run = tmp_path / "run"
    options = ("--backend", "onnx", "--zoom-in", "--zoom-in-target-size", "32", "--lbfgs-max-evaluations", "4")
    assert main(evaluate_args(dataset, run, *options, "--save-masks", "--gallery", "0")) == 0
    scored = sorted(set(built))
    assert {(mode, backend) for mode, backend, _ in scored} == {("NoBRS", "onnx"), ("f-BRS-B", "onnx")}
    shutil.move(run / "masks", tmp_path / "scored_masks")

    built.clear()
    galleries = {}
    draw = plots.draw_gallery

    def capturing_draw(tiles, path, **kwargs):
        galleries[path.name] = tiles
        return draw(tiles, path, **kwargs)

    monkeypatch.setattr(plots, "draw_gallery", capturing_draw)
    assert main(evaluate_args(dataset, run, *options, "--gallery", "2")) == 0  # resumes: reports only
    assert sorted(set(built)) == scored  # the replay's predictors are the scoring run's
    assert sorted(galleries) == ["synth__NoBRS.png", "synth__f-BRS-B.png"]
    for name, tiles in galleries.items():
        mode = name.removeprefix("synth__").removesuffix(".png")
        assert sorted(tile["sample"] for tile in tiles) == ["img00", "img01"]
        for tile in tiles:
            with Image.open(tmp_path / "scored_masks" / "synth" / mode / f"{tile['sample']}.png") as saved:
                np.testing.assert_array_equal(tile["mask"], np.asarray(saved) > 127)
