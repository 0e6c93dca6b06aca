"""The public API on a tiny model: set_image / add_click / undo / get_state / predict, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fbrs
from fbrs.errors import InvalidClickError, InvalidImageError

MODES = ["NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B", "f-BRS-C", "f-BRS-A-guarded", "f-BRS-B-guarded",
         "f-BRS-C-guarded"]


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(72, 96, 3), dtype=np.uint8)
    picture[20:50, 30:70] = rng.integers(180, 255, size=(30, 40, 3), dtype=np.uint8)
    return picture


def _predictor(model, mode, **options):
    options.setdefault("zoom_in_target_size", 96)
    return fbrs.Predictor(model, mode=mode, **options)


@pytest.mark.parametrize("mode", MODES)
def test_clicks_give_probability_maps_and_undo_is_exact(tiny_model, image, mode):
    predictor = _predictor(tiny_model, mode)
    predictor.set_image(image)
    first = predictor.add_click(35, 50, True)
    assert first.shape == (72, 96) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    second = predictor.add_click(5, 5, False)
    state_after_two = predictor.get_state()
    third = predictor.add_click(40, 60, True)
    assert len(predictor.clicks) == 3
    assert np.array_equal(predictor.undo(), second)
    assert len(predictor.clicks) == 2
    # Re-adding the same click after undo reproduces the same result exactly (state fully restored).
    assert np.array_equal(predictor.add_click(40, 60, True), third)
    predictor.set_state(state_after_two)
    assert np.array_equal(predictor.add_click(40, 60, True), third)
    predictor.undo()
    predictor.undo()
    assert np.array_equal(predictor.probabilities, first)
    predictor.undo()
    assert predictor.probabilities is None and predictor.clicks == []


def test_stateless_predict_equals_incremental_clicks(tiny_model, image):
    predictor = _predictor(tiny_model, "f-BRS-B")
    predictor.set_image(image)
    points = [(35, 50), (5, 5), (40, 60)]
    labels = [1, 0, 1]
    incremental = [predictor.add_click(y, x, bool(label)) for (y, x), label in zip(points, labels, strict=True)]
    other = _predictor(tiny_model, "f-BRS-B")
    other.set_image(image)
    other.add_click(10, 10, True)
    probs, state = other.predict(points[:2], labels[:2], return_state=True)
    assert np.array_equal(probs, incremental[1])
    assert np.array_equal(other.predict(points, labels, prev_state=state), incremental[2])
    assert len(other.clicks) == 1  # predict() leaves the interactive state alone


def test_zoom_in_and_flip_options_change_the_computation(tiny_model, image):
    results = {}
    for zoom_in in (False, True):
        for flip in (False, True):
            predictor = _predictor(tiny_model, "NoBRS", zoom_in=zoom_in, with_flip=flip, zoom_in_target_size=128)
            predictor.set_image(image)
            predictor.add_click(35, 50, True)
            results[zoom_in, flip] = predictor.add_click(5, 5, False)
            assert (predictor.zoom_in is not None and predictor.zoom_in.roi is not None) == zoom_in
    assert not np.array_equal(results[False, False], results[False, True])
    assert not np.array_equal(results[False, True], results[True, True])


def test_image_conversions(tiny_model):
    predictor = _predictor(tiny_model, "NoBRS")
    gray = np.full((20, 30), 100, dtype=np.uint8)
    predictor.set_image(gray)
    assert predictor.image_size == (20, 30)
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    predictor.set_image(rgba)
    sixteen = np.full((20, 30, 3), 65535, dtype=np.uint16)
    assert fbrs.images.as_rgb_uint8(sixteen).max() == 255
    for bad, message in [
        (np.zeros((0, 30, 3), np.uint8), "empty"),
        (np.zeros((20, 30, 3), np.int64), "dtype"),
        (np.zeros((20, 30, 5), np.uint8), "shape"),
        ("not an array", "numpy array"),
        (np.full((20, 30, 3), 2.0), "[0, 1]"),
    ]:
        with pytest.raises(InvalidImageError, match=message):
            predictor.set_image(bad)


def test_bad_clicks_are_refused_with_a_clear_message(tiny_model, image):
    predictor = _predictor(tiny_model, "NoBRS", max_clicks=2)
    with pytest.raises(InvalidImageError, match="set_image"):
        predictor.add_click(1, 1, True)
    predictor.set_image(image)
    with pytest.raises(InvalidClickError, match=r"click \(y=900, x=20\) is outside the image \(height 72, width 96\)"):
        predictor.add_click(900, 20, True)
    with pytest.raises(InvalidClickError, match="outside"):
        predictor.add_click(-1, 20, True)
    with pytest.raises(InvalidClickError, match="numbers"):
        predictor.add_click("a", 20, True)
    predictor.add_click(1, 1, True)
    predictor.add_click(2, 2, False)
    with pytest.raises(InvalidClickError, match="at most 2 clicks"):
        predictor.add_click(3, 3, True)
    with pytest.raises(InvalidClickError, match="labels"):
        predictor.predict([(1, 1)], [1, 0])


def test_create_predictor_lists_learned_modes(tiny_model):
    for mode in MODES:
        assert mode in fbrs.available_modes()
        assert isinstance(fbrs.create_predictor(mode, tiny_model), fbrs.Predictor)
    with pytest.raises(KeyError, match="unknown predictor mode"):
        fbrs.create_predictor("f-BRS-Z", tiny_model)
