"""The SAM family behind the public predictor API, on a tiny random SAM-shaped model (milliseconds per
click); every SAM mode gets what tests/test_predictor_api.py gives the DeepLab modes."""

from __future__ import annotations

import numpy as np
import pytest

import fbrs
from fbrs.errors import InvalidClickError, InvalidImageError
from fbrs.inference.sam_modes import SAM_MODES
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.models.sam.tiny import build_tiny_sam_model

MODES = list(SAM_MODES)


@pytest.fixture(scope="module")
def image(box_image):
    return box_image


@pytest.mark.parametrize("mode", MODES)
def test_clicks_give_probability_maps_and_undo_is_exact(tiny_sam, image, mode):
    predictor = fbrs.create_predictor(mode, tiny_sam)
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
    assert np.array_equal(predictor.add_click(40, 60, True), third)
    predictor.set_state(state_after_two)
    assert np.array_equal(predictor.add_click(40, 60, True), third)
    predictor.undo()
    predictor.undo()
    assert np.array_equal(predictor.probabilities, first)
    predictor.undo()
    assert predictor.probabilities is None and predictor.clicks == []


@pytest.mark.parametrize("mode", MODES)
def test_stateless_predict_equals_incremental_clicks(tiny_sam, image, mode):
    predictor = fbrs.create_predictor(mode, tiny_sam)
    predictor.set_image(image)
    points = [(35, 50), (5, 5), (40, 60)]
    labels = [1, 0, 1]
    incremental = [predictor.add_click(y, x, bool(label)) for (y, x), label in zip(points, labels, strict=True)]
    other = fbrs.create_predictor(mode, tiny_sam)
    other.set_image(image)
    other.add_click(10, 10, True)
    probs, state = other.predict(points[:2], labels[:2], return_state=True)
    assert np.array_equal(probs, incremental[1])
    assert np.array_equal(other.predict(points, labels, prev_state=state), incremental[2])
    assert len(other.clicks) == 1


def test_f_brs_modes_optimise_and_keep_the_lowest_loss(tiny_sam, image):
    plain = fbrs.create_predictor("SAM", tiny_sam)
    plain.set_image(image)
    plain.add_click(35, 50, True)
    baseline = plain.add_click(5, 5, False)
    for mode in [name for name in MODES if SAM_MODES[name].insertion is not None]:
        predictor = fbrs.create_predictor(mode, tiny_sam)
        predictor.set_image(image)
        first = predictor.add_click(35, 50, True)
        assert np.array_equal(first, plain.predict([(35, 50)], [1]))  # no optimisation on the first click
        refined = predictor.add_click(5, 5, False)
        losses = predictor.refiner.last_loss_values
        assert len(losses) > 1 and min(losses) < losses[0], mode
        assert not np.array_equal(refined, baseline), mode
        # After the transformer the gradient goes through the click squares only (same f(x), tested below).
        assert predictor.refiner.support_gradient == (SAM_MODES[mode].insertion != "image_embedding"), mode


def test_mask_feedback_and_multimask_options_change_the_computation(tiny_sam, image):
    results = {}
    for feedback in (False, True):
        for multimask in (False, True):
            predictor = SamPredictor(tiny_sam, mask_feedback=feedback, multimask_first_click=multimask)
            predictor.set_image(image)
            results[feedback, multimask, 1] = predictor.add_click(35, 50, True)
            results[feedback, multimask, 2] = predictor.add_click(5, 5, False)
    assert np.array_equal(results[False, True, 1], results[True, True, 1])  # nothing to feed back yet
    assert not np.array_equal(results[True, True, 1], results[True, False, 1])
    assert not np.array_equal(results[False, True, 2], results[True, True, 2])


def test_the_image_is_encoded_once(image):
    model = build_tiny_sam_model(seed=1)
    calls = []
    encoder = model.encoder
    model.encoder = lambda picture: calls.append(1) or encoder(picture)
    first = fbrs.create_predictor("SAM", model)
    first.set_image(image)
    for y, x, positive in [(35, 50, True), (5, 5, False), (40, 60, True)]:
        first.add_click(y, x, positive)
    first.reset()
    second = fbrs.create_predictor("SAM-f-BRS-upscaled", model)
    second.set_image(image.copy())
    second.add_click(35, 50, True)
    assert len(calls) == 1
    second.set_image(image[:, ::-1].copy())
    assert len(calls) == 2


def test_bad_input_is_refused_with_a_clear_message(tiny_sam, image):
    predictor = SamPredictor(tiny_sam, max_clicks=2)
    with pytest.raises(InvalidImageError, match="set_image"):
        predictor.add_click(1, 1, True)
    predictor.set_image(image)
    with pytest.raises(InvalidClickError, match=r"click \(y=900, x=20\) is outside the image \(height 72, width 96\)"):
        predictor.add_click(900, 20, True)
    with pytest.raises(InvalidClickError, match="numbers"):
        predictor.add_click("a", 20, True)
    predictor.add_click(1, 1, True)
    predictor.add_click(2, 2, False)
    with pytest.raises(InvalidClickError, match="at most 2 clicks"):
        predictor.add_click(3, 3, True)
    with pytest.raises(InvalidClickError, match="labels"):
        predictor.predict([(1, 1)], [1, 0])
    predictor.set_image(np.full((20, 30), 100, dtype=np.uint8))
    assert predictor.image_size == (20, 30)


def test_sam_modes_are_registered(tiny_sam, tiny_model):
    from fbrs.registry import PREDICTORS

    for mode in MODES:
        assert mode in fbrs.available_modes()
        assert PREDICTORS.meta(mode)["needs_model"] is False and PREDICTORS.meta(mode)["family"] == "sam"
        assert isinstance(fbrs.create_predictor(mode, tiny_sam), SamPredictor)
    with pytest.raises(TypeError, match="SamModel"):
        fbrs.create_predictor("SAM", tiny_model)


@pytest.mark.parametrize("margin", [0.05, 0.1])
def test_the_output_switch_returns_the_output_the_iou_head_rates_clearly_better(image, margin):
    """From the second click on, output_switch returns the output with the highest predicted IoU where that
    prediction beats the single-mask output's by more than the margin; the first click keeps SAM's rule."""
    import torch

    from fbrs.inference.sam_network import OutputSwitchConfig

    model = build_tiny_sam_model(seed=1)  # its IoU head rates output 2 above output 0 at the second click
    plain = SamPredictor(model)
    switched = SamPredictor(model, output_switch=OutputSwitchConfig(margin))
    for predictor in (plain, switched):
        predictor.set_image(image)
    assert np.array_equal(switched.add_click(35, 50, True), plain.add_click(35, 50, True))
    previous = switched.get_state().low_res
    embedding = model.embed(image)
    scale = embedding.scale
    coords = torch.tensor([[(50 * scale, 35 * scale), (5 * scale, 5 * scale), (0.0, 0.0)]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    with torch.no_grad():
        masks, ious = model.decoder(embedding.embedding, coords, labels, previous)
    best = int(torch.argmax(ious[0]))
    assert best != 0, "the tiny model no longer exercises the switch"
    expected = best if float(ious[0, best] - ious[0, 0]) > margin else 0
    switched_second, plain_second = switched.add_click(5, 5, False), plain.add_click(5, 5, False)
    torch.testing.assert_close(switched.get_state().low_res, masks[:, expected : expected + 1], atol=1e-4, rtol=0)
    assert np.array_equal(switched_second, plain_second) == (expected == 0)


@pytest.mark.parametrize("insertion", ["image_tokens", "upscaled"])
def test_the_support_gradient_is_the_whole_map_gradient(tiny_sam, image, insertion):
    """FeatureBRS(support_gradient=True), the SAM f-BRS modes' way, optimises the same f(x) as the original's
    whole-map backward pass: same loss, same gradient (up to float summation order)."""
    import torch

    from fbrs.inference.brs.objective import BRSConfig, ClickObjective, SupportClickObjective
    from fbrs.inference.clicks import Click, click_squares, points_tensor
    from fbrs.inference.sam_network import SamNetwork

    embedding = tiny_sam.embed(image)
    network = SamNetwork(tiny_sam.decoder, embedding, None, multimask=False)
    frame = torch.zeros((1, 1, 64, 64))
    clicks = [[Click(20.0, 30.0, True), Click(3.0, 60.0, False), Click(40.0, 10.0, True)]]
    features, context = network.features_at(insertion, frame, points_tensor(clicks))
    positive, negative = click_squares(clicks, 64, 64)
    channels = network.insertion_channels(insertion)

    def unpack(x):
        scale, bias = torch.chunk(x, 2)
        return (1 + scale.view(1, -1, 1, 1), bias.view(1, -1, 1, 1)), 1e-3 * torch.sum(x**2)

    def logits_fn(scale, bias):
        return network.logits_from(insertion, features * scale + bias, context, (64, 64))

    def support_fn(scale, bias):
        return network.support_logits_from(insertion, features, context, (positive + negative) > 0, scale, bias)

    config = BRSConfig(min_iou_diff=0.0)  # no early exit on an unchanged mask: both must return a gradient
    x = np.random.default_rng(0).normal(0, 0.3, 2 * channels).astype(np.float32)
    whole_value, whole_gradient = ClickObjective(config, logits_fn, unpack, positive, negative)(x)
    objective = SupportClickObjective(config, logits_fn, support_fn, unpack, positive, negative)
    value, gradient = objective(x)
    assert np.abs(whole_gradient).max() > 1e-4  # the clicks are violated: there is a gradient to compare
    np.testing.assert_allclose(value, whole_value, rtol=1e-5)
    np.testing.assert_allclose(gradient, whole_gradient, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(objective.best_logits, logits_fn(*unpack(torch.from_numpy(x))[0]).detach())
