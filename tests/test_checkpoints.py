"""Checkpoint formats: ours (safetensors + config), the original .pth state_dicts, and broken files."""

from __future__ import annotations

import pytest
import torch

import fbrs
from fbrs.errors import CheckpointError
from fbrs.models.checkpoint import infer_original_config, read_metadata


def _randomised(name: str) -> fbrs.models.InteractiveModel:
    torch.manual_seed(1)
    model = fbrs.build_model(name)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def _outputs(model) -> torch.Tensor:
    torch.manual_seed(2)
    image = torch.randn(1, 3, 64, 80)
    points = torch.tensor([[[20.0, 30.0], [-1.0, -1.0]]])
    with torch.no_grad():
        return model(image, points)


def test_safetensors_round_trip_keeps_config_and_weights(tmp_path):
    model = _randomised("tiny_test")
    path = fbrs.save_model(model, tmp_path / "tiny.safetensors", metadata={"note": "test"})
    loaded = fbrs.load_model(path)
    assert loaded.config == model.config
    assert read_metadata(path) == {"note": "test"}
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=0, rtol=0)
    half = fbrs.save_model(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < path.stat().st_size
    torch.testing.assert_close(_outputs(fbrs.load_model(half)), _outputs(model), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["resnet34_dh128", "resnet50_dh128", "resnet101_dh256"])
def test_original_layout_is_recognised_from_keys_and_shapes(name):
    state = fbrs.build_model(name).state_dict()
    config = infer_original_config(state)
    assert config.backbone == name.split("_")[0]
    assert config.deeplab_ch == int(name.split("dh")[1])
    assert config.aspp_dropout == (0.5 if config.deeplab_ch == 256 else 0.2)


def test_original_pth_loads_unchanged_and_converts(tmp_path):
    model = _randomised("resnet34_dh128")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    original = tmp_path / "resnet34_dh128_sbd.pth"
    torch.save(state, original)  # raw state_dict, as released (MXNet conversions lack num_batches_tracked)
    loaded = fbrs.load_model(original)
    assert loaded.config.name == "resnet34_dh128"
    expected = _outputs(model)
    torch.testing.assert_close(_outputs(loaded), expected, atol=0, rtol=0)
    from fbrs.cli import main

    assert main(["convert", str(original), str(tmp_path / "converted.safetensors")]) == 0
    torch.testing.assert_close(_outputs(fbrs.load_model(tmp_path / "converted.safetensors")), expected, atol=0, rtol=0)


def test_broken_and_foreign_checkpoints_get_clear_errors(tmp_path):
    good = fbrs.save_model(fbrs.build_model("tiny_test"), tmp_path / "good.safetensors")
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "tiny.safetensors": data[:5],
        "garbage.pth": b"this is not a checkpoint at all",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            fbrs.load_model(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        fbrs.load_model(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        fbrs.load_model(tmp_path / "foreign.pth")
    torch.save({"state": [1, 2, 3]}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        fbrs.load_model(tmp_path / "objects.pth")
    state = fbrs.build_model("resnet34_dh128").state_dict()
    state["feature_extractor.aspp.project.0.weight"] = torch.zeros(64, 640, 1, 1)
    torch.save(state, tmp_path / "mismatch.pth")
    with pytest.raises(CheckpointError, match="shapes do not match"):
        fbrs.load_model(tmp_path / "mismatch.pth")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without an fbrs model config"):
        fbrs.load_model(tmp_path / "plain.safetensors")
