"""Predictor options and memory behaviour added for speed: max_image_side, shared (read-only) history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs
from fbrs.inference.packed import UpsampledMap


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(120, 160, 3), dtype=np.uint8)
    picture[30:90, 40:120] = rng.integers(180, 255, size=(60, 80, 3), dtype=np.uint8)
    return picture


CLICKS = [(60, 80, True), (10, 10, False), (70, 100, True)]


def _record_network_sizes(predictor):
    sizes = []
    original = predictor.refiner.predict

    def recording(model, image, clicks_lists, image_changed):
        sizes.append(tuple(image.shape[2:]))
        return original(model, image, clicks_lists, image_changed)

    predictor.refiner.predict = recording
    return sizes


@pytest.mark.parametrize("mode", ["NoBRS", "f-BRS-B", "RGB-BRS"])
@pytest.mark.parametrize("zoom_in", [True, False])
def test_max_image_side_bounds_the_whole_image_input(tiny_model, image, mode, zoom_in):
    predictor = fbrs.Predictor(tiny_model, mode=mode, zoom_in=zoom_in, zoom_in_target_size=64, max_image_side=80)
    sizes = _record_network_sizes(predictor)
    predictor.set_image(image)
    for click in CLICKS:
        probs = predictor.add_click(*click)
        assert probs.shape == (120, 160) and probs.dtype == np.float32
        assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert sizes[0] == (60, 80)  # the first click never has a crop: resized to the longer side 80
    assert all(max(size) <= 80 for size in sizes)


def test_max_image_side_first_click_is_the_resized_prediction_resized_back(tiny_model, image):
    predictor = fbrs.Predictor(tiny_model, mode="NoBRS", max_image_side=80)
    predictor.set_image(image)
    probs = predictor.add_click(60, 80, True)
    small = torch.nn.functional.interpolate(
        fbrs.inference.normalise.normalise_image(image), size=(60, 80), mode="bilinear", align_corners=True
    )
    small = torch.cat([small, torch.flip(small, dims=[3])])
    points = torch.tensor([[[30.0, 40.0], [-1, -1]], [[30.0, 80 - 40.0 - 1], [-1, -1]]])
    with torch.no_grad():
        logits = tiny_model(small, points)
        logits = 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3]))
        expected = torch.nn.functional.interpolate(
            torch.sigmoid(logits), size=(120, 160), mode="bilinear", align_corners=True
        )[0, 0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["NoBRS", "f-BRS-B"])
def test_max_image_side_not_reached_changes_nothing(tiny_model, image, mode):
    results = []
    for max_side in (None, 160, 1000):
        predictor = fbrs.Predictor(tiny_model, mode=mode, zoom_in_target_size=64, max_image_side=max_side)
        predictor.set_image(image)
        results.append([predictor.add_click(*click) for click in CLICKS])
    for other in results[1:]:
        for first, second in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(first, second)


def test_max_image_side_rejects_nonsense(tiny_model):
    with pytest.raises(ValueError, match="max_image_side"):
        fbrs.Predictor(tiny_model, max_image_side=0)


def test_history_shares_read_only_probabilities_and_undo_stays_exact(tiny_model, image):
    predictor = fbrs.Predictor(tiny_model, mode="f-BRS-B", zoom_in_target_size=64)
    predictor.set_image(image)
    returned = [predictor.add_click(*click) for click in CLICKS]
    for probs in returned:
        assert not probs.flags.writeable
        with pytest.raises(ValueError):
            probs[0, 0] = 1.0
    # The undo history keeps the returned arrays themselves, or the smaller output they were resized from
    # (fbrs.inference.packed), never a copy.
    stored = predictor.get_state()["probabilities"]
    assert stored is returned[-1] or (isinstance(stored, UpsampledMap) and stored.nbytes < returned[-1].nbytes)
    np.testing.assert_array_equal(predictor.undo(), returned[-2])
    again = predictor.add_click(*CLICKS[-1])
    np.testing.assert_array_equal(again, returned[-1])
