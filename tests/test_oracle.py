"""The f-BRS oracle (Appendix B) moves the prediction towards the ground truth, leaving the state alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs


@pytest.mark.parametrize("zoom_in", [False, True])
def test_oracle_improves_iou_and_keeps_state(zoom_in):
    torch.manual_seed(3)
    model = fbrs.build_model("tiny_test")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
        model.head.layers[-1].weight.mul_(30)  # spatially varying logits from a random tiny model
    model.eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, size=(64, 80, 3), dtype=np.uint8)
    image[16:48, 20:60] = 200
    gt = np.zeros((64, 80), dtype=bool)
    gt[16:48, 20:60] = True
    predictor = fbrs.Predictor(model, mode="f-BRS-B", zoom_in=zoom_in, zoom_in_target_size=96)
    predictor.set_image(image)
    predictor.add_click(30, 40, True)
    probs = predictor.add_click(2, 2, False)
    state = predictor.get_state()
    oracle = predictor.oracle_refine(gt)
    assert oracle.shape == gt.shape and oracle.dtype == np.float32
    # A random tiny model cannot reach the mask, but the optimisation must move towards it.
    assert np.abs(oracle - gt).mean() < np.abs(probs - gt).mean()
    assert np.array_equal(predictor.get_state()["probabilities"], state["probabilities"])
    np.testing.assert_array_equal(predictor.refiner.variables, state["refiner"]["variables"])
    with pytest.raises(ValueError, match="not f-BRS"):
        nobrs = fbrs.Predictor(model, mode="NoBRS")
        nobrs.set_image(image)
        nobrs.add_click(30, 40, True)
        nobrs.oracle_refine(gt)
