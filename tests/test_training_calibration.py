"""Output-logit calibration on held-out training objects (`fbrs calibrate`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs
from fbrs.cli import main
from fbrs.models.checkpoint import read_metadata
from fbrs.training.calibration import calibrate_logit_offset, output_bias, shift_output_logit
from fbrs.training.data import ValidationObject


def ellipse_objects(count: int = 3) -> list[ValidationObject]:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:48, 0:64]
    objects = []
    for index in range(count):
        gt = ((rows - 24) / 16.0) ** 2 + ((cols - 30 - index) / 22.0) ** 2 < 1
        image = rng.integers(0, 80, (48, 64, 3), dtype=np.uint8)
        image[gt] += 150
        objects.append(ValidationObject(f"ellipse{index}", image, gt, np.zeros_like(gt)))
    return objects


def test_an_under_confident_model_gets_a_positive_offset_and_is_left_unchanged(tiny_model):
    model = fbrs.build_model("tiny_test")
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    shift_output_logit(model, -6.0)  # every probability far below 0.49: empty masks, IoU 0
    before = output_bias(model).detach().clone()
    result = calibrate_logit_offset(model, ellipse_objects(), clicks=(1, 2), offsets=(-1.0, 0.0, 3.0, 6.0, 9.0))
    assert torch.equal(output_bias(model), before)  # calibration only measures
    assert result.scores[0.0] == pytest.approx(0.0)
    assert result.offset > 0 and result.scores[result.offset] > 0.1
    assert result.baseline_metrics["iou@1"] == pytest.approx(0.0)
    shift_output_logit(model, result.offset)
    torch.testing.assert_close(output_bias(model), before + result.offset)


def test_a_constant_logit_offset_shifts_every_output_logit_exactly(tiny_model):
    model = fbrs.build_model("tiny_test")
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    image = torch.rand((1, 3, 40, 56), generator=torch.Generator().manual_seed(1))
    points = torch.tensor([[[20.0, 28.0], [-1.0, -1.0]]])
    with torch.no_grad():
        reference = model(image, points)
        shift_output_logit(model, 1.5)
        shifted = model(image, points)
    torch.testing.assert_close(shifted, reference + 1.5, rtol=0, atol=1e-5)


def test_calibrate_cli_writes_a_self_describing_model_and_refuses_to_calibrate_twice(tiny_model, tmp_path, capsys):
    from PIL import Image

    model_path = tmp_path / "tiny.safetensors"
    fbrs.save_model(tiny_model, model_path)
    folder = tmp_path / "train"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for item in ellipse_objects(12):
        Image.fromarray(item.image).save(folder / "images" / f"{item.name}.png")
        Image.fromarray(item.gt.astype(np.uint8) * 255).save(folder / "masks" / f"{item.name}.png")
    config = tmp_path / "recipe.toml"
    config.write_text(
        f'[[data.sources]]\npath = "{folder}"\nkind = "folder"\n\n'
        "[data]\nvalidation_fraction = 0.5\nmax_side = 96\nmin_object_area = 50\n\n"
        '[model]\nname = "tiny_test"\n\n[validation]\nclicks = [1, 2]\nmax_side = 64\nmin_object_area = 50\n'
    )
    out = tmp_path / "calibrated.safetensors"
    code = main(["calibrate", str(config), "--model", str(model_path), "-o", str(out), "--offsets=-1,0,1"])
    assert code == 0, capsys.readouterr()
    calibration = read_metadata(out)["calibration"]
    assert calibration["logit_offset"] in (-1.0, 0.0, 1.0) and calibration["validation_objects"] > 0
    calibrated = fbrs.load_model(out)
    expected = output_bias(tiny_model) + calibration["logit_offset"]
    torch.testing.assert_close(output_bias(calibrated), expected, rtol=0, atol=2e-3)  # float16 file
    assert main(["calibrate", str(config), "--model", str(out), "-o", str(tmp_path / "again.safetensors")]) == 2
    assert "already calibrated" in capsys.readouterr().err
