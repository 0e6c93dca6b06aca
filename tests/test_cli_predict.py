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
