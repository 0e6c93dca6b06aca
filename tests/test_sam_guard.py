"""The SAM feedback guard (fbrs.inference.sam_guard): the no-mask answer replaces a fed-back one that breaks
the clicks or the mask far from the new click; off by default in every mode but "SAM-guarded"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs
from fbrs.inference.clicks import Click
from fbrs.inference.sam_guard import (
    Answer,
    FeedbackGuardConfig,
    choose_answer,
    resolve_feedback_guard,
    violated_clicks,
)
from fbrs.inference.sam_modes import SAM_MODES
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.models.sam.tiny import build_tiny_sam_model

SIZE = 64


def _disc(cy: float, cx: float, radius: float) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                                   indexing="ij")
    return torch.where((rows - cy) ** 2 + (columns - cx) ** 2 <= radius**2, 6.0, -6.0).view(1, 1, SIZE, SIZE)


# The previous answer: the object (a disc at the left). A negative click on a leak at its right edge.
PREVIOUS = _disc(32, 24, 14)
CLICKS = [Click(32, 24, True), Click(32, 37, False)]
CORRECTED = torch.where(torch.arange(SIZE).view(1, 1, 1, SIZE) >= 35, -6.0, PREVIOUS)  # leak cut off near the click
COLLAPSED = _disc(32, 24, 3)  # respects both clicks but has lost the object far from the new click
GROWN = _disc(32, 24, 20)  # puts the negative click inside


def test_violated_clicks_counts_clicks_on_their_wrong_side():
    assert violated_clicks(PREVIOUS, CLICKS) == 1  # the new negative click is on the leak
    assert violated_clicks(CORRECTED, CLICKS) == 0 and violated_clicks(COLLAPSED, CLICKS) == 0
    assert violated_clicks(GROWN, CLICKS) == 1
    assert violated_clicks(-GROWN, CLICKS) == 1  # the positive click outside, the negative one outside: one wrong


@pytest.mark.parametrize(
    ("rules", "fed", "fed_iou", "free", "free_iou", "expected"),
    [
        (("clicks",), GROWN, 0.9, CORRECTED, 0.5, "clicks"),  # the fed-back answer breaks a click
        (("clicks",), CORRECTED, 0.9, GROWN, 0.99, "fed"),  # the no-mask answer breaks one: never chosen
        (("clicks", "far"), COLLAPSED, 0.9, CORRECTED, 0.5, "far"),  # clicks kept but the object lost far away
        (("clicks",), COLLAPSED, 0.9, CORRECTED, 0.5, "fed"),  # ... which the click rule alone does not see
        (("clicks", "far"), CORRECTED, 0.9, COLLAPSED, 0.5, "fed"),  # a correction near the click is kept
        (("iou",), CORRECTED, 0.6, COLLAPSED, 0.7, "iou"),
        (("iou",), CORRECTED, 0.6, COLLAPSED, 0.62, "fed"),  # within the margin
    ],
)
def test_choose_answer(rules, fed, fed_iou, free, free_iou, expected):
    config = FeedbackGuardConfig(rules=rules, iou_margin=0.05)
    fed_answer, free_answer = Answer(fed, fed_iou), Answer(free, free_iou)
    rule, chosen = choose_answer(config, fed_answer, [free_answer], PREVIOUS, CLICKS)
    assert rule == expected
    assert chosen is (fed_answer if expected == "fed" else free_answer)


def test_choose_answer_among_several_alternatives_takes_the_best_one():
    config = FeedbackGuardConfig(rules=("clicks", "far", "iou"), iou_margin=0.05)
    fed = Answer(COLLAPSED, 0.9)  # keeps the clicks, loses the object far away
    breaking, mild, corrected = Answer(GROWN, 0.99), Answer(_disc(32, 24, 9), 0.5), Answer(CORRECTED, 0.4)
    # far: the alternative that keeps the clicks and changes least far away; the one breaking a click never
    assert choose_answer(config, fed, [breaking, mild, corrected], PREVIOUS, CLICKS) == ("far", corrected)
    # clicks: of those breaking fewer clicks than the fed-back answer, the fewest, then the highest IoU
    grown = Answer(GROWN, 0.9)
    assert choose_answer(config, grown, [mild, corrected], PREVIOUS, CLICKS) == ("clicks", mild)
    assert choose_answer(config, grown, [], PREVIOUS, CLICKS) == ("fed", grown)
    # iou: the highest-rated of the eligible alternatives, beyond the margin
    fine = Answer(CORRECTED, 0.6)
    assert choose_answer(config, fine, [Answer(CORRECTED, 0.7), Answer(CORRECTED, 0.8)], PREVIOUS, CLICKS)[1].iou == 0.8
    with pytest.raises(ValueError, match="alternatives"):
        FeedbackGuardConfig(alternatives=("box",))


def test_config_and_option_errors():
    with pytest.raises(ValueError, match="unknown feedback guard rule"):
        FeedbackGuardConfig(rules=("clicks", "area"))
    with pytest.raises(TypeError):
        resolve_feedback_guard("on", False)
    assert resolve_feedback_guard(None, False) is None and resolve_feedback_guard(None, True) == FeedbackGuardConfig()


@pytest.fixture(scope="module")
def image(box_image):
    return box_image


@pytest.fixture()
def loud_mask_model():
    """Tiny random model (seed 1) whose mask input weighs 5x more: the fed-back mask then overrides the
    second click (it stays inside the mask), while the decoder without mask input respects it."""
    model = build_tiny_sam_model(seed=1)
    with torch.no_grad():
        model.decoder.prompt_encoder.mask_downscaling[-1].weight.mul_(5.0)
    return model


def test_the_guard_takes_the_no_mask_answer_when_the_fed_back_one_violates_a_click(loud_mask_model, image):
    fed, free = SamPredictor(loud_mask_model), SamPredictor(loud_mask_model, mask_feedback=False)
    guarded = SamPredictor(loud_mask_model, feedback_guard=FeedbackGuardConfig(rules=("clicks",)))
    clicks = [(35, 50, True), (5, 5, False)]
    for predictor in (fed, free, guarded):
        predictor.set_image(image)
        for click in clicks:
            result = predictor.add_click(*click)
    assert guarded.last_feedback_choice == "clicks"
    fed_mask, free_mask, guarded_mask = fed.mask, free.mask, guarded.mask
    assert fed_mask[5, 5] and not free_mask[5, 5]  # the precondition: the fed-back answer breaks the negative click
    np.testing.assert_array_equal(guarded.probabilities, free.probabilities)
    assert not guarded_mask[5, 5] and result is guarded.probabilities
    # The chosen answer is the next mask input, and undo restores the fed-back state exactly.
    assert torch.equal(guarded.get_state()["low_res"], free.get_state()["low_res"])
    guarded.undo()
    np.testing.assert_array_equal(guarded.add_click(*clicks[-1]), free.probabilities)


def test_where_the_fed_back_answer_is_fine_the_guard_changes_nothing(image):
    model = build_tiny_sam_model(seed=0)
    plain, guarded = SamPredictor(model), SamPredictor(model, feedback_guard=FeedbackGuardConfig(rules=("clicks",)))
    for predictor in (plain, guarded):
        predictor.set_image(image)
    plain.add_click(35, 50, True), guarded.add_click(35, 50, True)
    assert guarded.last_feedback_choice is None  # no mask input at the first click: nothing to guard
    np.testing.assert_array_equal(plain.add_click(5, 5, False), guarded.add_click(5, 5, False))
    assert guarded.last_feedback_choice == "fed"


@pytest.mark.parametrize("mode", [name for name, spec in SAM_MODES.items() if spec.feedback_guard is False])
def test_the_feedback_guard_is_off_by_default(mode):
    predictor = fbrs.create_predictor(mode, build_tiny_sam_model(seed=0))
    assert predictor.feedback_guard is None
    assert SamPredictor(build_tiny_sam_model(seed=0)).feedback_guard is None


def test_sam_guarded_is_the_plain_loop_with_the_guard(image):
    model = build_tiny_sam_model(seed=1)
    guarded = fbrs.create_predictor("SAM-guarded", model)
    assert guarded.feedback_guard == FeedbackGuardConfig() and guarded.insertion is None
    off = fbrs.create_predictor("SAM-guarded", model, feedback_guard=False)
    plain = fbrs.create_predictor("SAM", model)
    for predictor in (off, plain):
        predictor.set_image(image)
    for click in [(35, 50, True), (5, 5, False), (40, 60, True)]:
        np.testing.assert_array_equal(off.add_click(*click), plain.add_click(*click))
    by_iou = fbrs.create_predictor("SAM-guarded-iou", model)
    assert by_iou.feedback_guard == FeedbackGuardConfig(rules=("iou",), iou_margin=0.05)


def test_the_multimask_alternatives_are_the_fed_back_pass_outputs(image):
    from fbrs.inference.sam_guard import alternative_answers
    from fbrs.models.sam.frame import to_low_res

    model = build_tiny_sam_model(seed=0)
    embedding = model.embed(image)
    config = model.config
    size = config.low_res_size
    clicks = [Click(*to_low_res(35, 50, embedding.scale, config.input_size, size), True),
              Click(*to_low_res(5, 5, embedding.scale, config.input_size, size), False)]
    previous = _disc(size / 2, size / 2, size / 4)[:, :, :size, :size]
    previous = torch.nn.functional.interpolate(previous, size=(size, size))
    frame = torch.zeros((1, 1, size, size))
    guard = FeedbackGuardConfig(alternatives=("no_mask", "multimask"))
    answers = alternative_answers(guard, model.decoder, embedding, previous, True, frame, clicks)
    assert len(answers) == 4
    # the three multimask outputs of one decoder pass with the mask input, with their IoU predictions
    scale = embedding.scale
    coords = torch.tensor([[(50 * scale, 35 * scale), (5 * scale, 5 * scale), (0.0, 0.0)]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    with torch.no_grad():
        masks, ious = model.decoder(embedding.embedding, coords, labels, previous)
    for index, answer in enumerate(answers[1:], start=1):
        torch.testing.assert_close(answer.logits, masks[:, index : index + 1], atol=1e-4, rtol=0)
        assert answer.iou == pytest.approx(float(ious[0, index]), abs=1e-5)
