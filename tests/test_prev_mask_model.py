"""The previous mask as a model input (issue 18, item 2): an option of the model config, off for every
existing file; the predictor passes its previous probabilities; f-BRS works on top; ONNX refuses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fbrs
from fbrs.errors import ConfigError
from fbrs.inference.predictor import Predictor
from fbrs.models.checkpoint import default_model_path
from fbrs.models.interactive_model import InteractiveModel, widen_for_previous_mask


def _prev_mask_model() -> InteractiveModel:
    torch.manual_seed(4)
    model = widen_for_previous_mask(fbrs.build_model("tiny_test"))
    with torch.no_grad():
        model.rgb_conv[0].weight[:, 5] = torch.randn(8, 1, 1)  # a trained model would have moved it off zero
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_old_files_have_no_flag_and_keep_their_five_input_fusion():
    from safetensors import safe_open

    with safe_open(str(default_model_path()), "pt") as handle:
        stored = json.loads(handle.metadata()["fbrs_config"])
    assert "prev_mask_input" not in stored  # written before the option existed
    model = fbrs.models.load_default_model()
    assert not model.config.prev_mask_input and model.rgb_conv[0].in_channels == 5
    assert model.config.to_json() == json.dumps(stored, sort_keys=True)  # re-saved, its config reads the same
    image, points = torch.randn(1, 3, 64, 80), torch.tensor([[[20.0, 30.0], [-1.0, -1.0]]])
    with pytest.raises(ValueError, match="takes no previous mask"):
        model(image, points, torch.zeros(1, 1, 64, 80))


def test_first_click_sees_zeros_and_the_mask_changes_the_output(tmp_path):
    model = _prev_mask_model()
    image, points = torch.randn(2, 3, 64, 80), torch.tensor([[[20.0, 30.0], [-1.0, -1.0]]] * 2)
    with torch.no_grad():
        first = model(image, points)
        assert torch.equal(first, model(image, points, torch.zeros(2, 1, 64, 80)))
        assert not torch.allclose(first, model(image, points, torch.ones(2, 1, 64, 80)))
    with pytest.raises(ValueError, match="shape"):
        model(image, points, torch.zeros(2, 1, 32, 40))
    path = fbrs.save_model(model, tmp_path / "prev.safetensors", dtype=torch.float32)
    loaded = fbrs.load_model(path)
    assert loaded.config.prev_mask_input and loaded.rgb_conv[0].in_channels == 6
    mask = torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, points, mask), model(image, points, mask), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["NoBRS", "f-BRS-B", "RGB-BRS"])
def test_predictor_feeds_the_previous_probabilities(mode, monkeypatch):
    model = _prev_mask_model()
    seen = []
    original = InteractiveModel.fuse

    def recording_fuse(self, image, coord_features, prev_mask=None):
        seen.append(None if prev_mask is None else prev_mask.detach().clone())
        return original(self, image, coord_features, prev_mask)

    monkeypatch.setattr(InteractiveModel, "fuse", recording_fuse)
    rng = np.random.default_rng(0)
    predictor = Predictor(model, mode=mode, zoom_in=False, lbfgs_max_evaluations=3)
    predictor.set_image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    first = predictor.add_click(20, 30, True).copy()
    assert seen and all(not bool(mask.any()) for mask in seen)  # the first click: zeros
    seen.clear()
    predictor.add_click(10, 50, False)
    mask = seen[0]
    assert mask.shape == (2, 1, 48, 64)  # with the mirrored copy of flip TTA
    torch.testing.assert_close(mask[0, 0], torch.from_numpy(first))
    torch.testing.assert_close(mask[1, 0], torch.from_numpy(first[:, ::-1].copy()))


def test_zoom_in_crops_the_previous_mask_like_the_image(monkeypatch):
    model = _prev_mask_model()
    seen = []
    original = InteractiveModel.fuse

    def recording_fuse(self, image, coord_features, prev_mask=None):
        seen.append((tuple(image.shape[2:]), None if prev_mask is None else prev_mask.clone()))
        return original(self, image, coord_features, prev_mask)

    monkeypatch.setattr(InteractiveModel, "fuse", recording_fuse)
    with torch.no_grad():
        model.head.layers[-1].bias += 5.0  # a confident first mask, so that Zoom-In starts at the second click
    predictor = Predictor(model, mode="NoBRS", zoom_in=True, zoom_in_target_size=64, with_flip=False)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    predictor.add_click(60, 80, True)
    previous = predictor.probabilities.copy()
    predictor.add_click(62, 84, True)
    size, mask = seen[-1]
    assert mask.shape[2:] == size
    assert predictor.zoom_in.applied and size != (120, 160)
    rmin, rmax, cmin, cmax = predictor.zoom_in.roi
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(previous)[None, None, rmin : rmax + 1, cmin : cmax + 1],
        size=size,
        mode="bilinear",
        align_corners=True,
    )
    torch.testing.assert_close(mask, expected)


def test_onnx_export_of_a_prev_mask_model_is_refused_clearly():
    from fbrs.onnx.export import export_onnx_bytes

    with pytest.raises(ConfigError, match="not supported yet"):
        export_onnx_bytes(_prev_mask_model())


def test_previous_mask_is_cut_to_the_crop_and_mirrored_for_flip():
    from fbrs.models.interactive_model import previous_mask_network

    model = _prev_mask_model()
    probabilities = np.random.default_rng(2).random((30, 40)).astype(np.float32)
    probabilities.flags.writeable = False  # as the predictor's maps
    bound = previous_mask_network(model, probabilities, (5, 14, 10, 29), (10, 20), with_flip=True)
    expected = torch.from_numpy(probabilities[5:15, 10:30].copy())
    torch.testing.assert_close(bound.prev_mask[0, 0], expected)
    torch.testing.assert_close(bound.prev_mask[1, 0], torch.flip(expected, dims=[1]))
    assert bound.insertion_channels("after_aspp") == model.insertion_channels("after_aspp")
    with pytest.raises(NotImplementedError, match="ONNX"):
        previous_mask_network(object(), probabilities, None, (30, 40), with_flip=False)
