"""The f-BRS guard (fbrs.inference.brs.guard): keeps a click-respecting refinement, damps a destructive one,
and is off in the paper's modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs
from fbrs.inference.brs.guard import GuardConfig, far_change, far_from_clicks, guarded_solution, resolve_guard
from fbrs.inference.clicks import Click

SIZE = 64


def _disc(cy: float, cx: float, radius: float) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                                   indexing="ij")
    return ((rows - cy) ** 2 + (columns - cx) ** 2 <= radius**2).view(1, 1, SIZE, SIZE)


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, 8.0, -8.0)


# The network's own answer: an object (disc) that leaks into a bump on its right; a negative click on the bump.
OBJECT = _disc(32, 28, 14)
BUMP = _disc(32, 44, 5)
CLICKS = [[Click(32, 28, True), Click(32, 45, False)]]
NETWORK = _logits(OBJECT | BUMP)
RESPECTING = _logits(OBJECT & ~BUMP)  # removes the bump, near the negative click
DESTRUCTIVE = _logits(torch.zeros_like(OBJECT) | _disc(32, 28, 3))  # the negative click "wins": object gone


def _logits_at(table: dict[float, torch.Tensor]):
    """x -> logits by the fraction t = x[0] of the solution (x = t * [1, 1, ...])."""

    def logits_at(x: np.ndarray) -> torch.Tensor:
        return table[round(float(x[0]), 6)]

    return logits_at


def test_far_from_clicks_excludes_discs_around_every_click_of_its_item():
    far = far_from_clicks([[Click(10, 10, True)], [Click(50, 50, False), Click(5, 60, True)]], SIZE, SIZE, 4.0)
    assert far.shape == (2, 1, SIZE, SIZE)
    assert not far[0, 0, 10, 14] and far[0, 0, 10, 15] and far[0, 0, 50, 50]
    assert not far[1, 0, 50, 50] and not far[1, 0, 5, 60] and far[1, 0, 10, 10]


def test_the_guard_keeps_a_click_respecting_refinement():
    config = GuardConfig(radius=0.25, max_far_change=0.2)
    assert far_change(RESPECTING, NETWORK, CLICKS, config, 0.49) < 0.05
    solution = np.ones(8, dtype=np.float32)
    variables, logits, fraction = guarded_solution(
        config, _logits_at({0.0: NETWORK, 1.0: RESPECTING}), solution, RESPECTING, CLICKS, 0.49
    )
    assert fraction == 1.0 and variables is solution and logits is RESPECTING


def test_the_guard_damps_a_destructive_refinement_towards_the_networks_answer():
    config = GuardConfig(radius=0.25, max_far_change=0.2, damping=(0.5, 0.25))
    assert far_change(DESTRUCTIVE, NETWORK, CLICKS, config, 0.49) > 0.5
    solution = np.ones(8, dtype=np.float32)
    table = {0.0: NETWORK, 1.0: DESTRUCTIVE, 0.5: DESTRUCTIVE, 0.25: RESPECTING}
    variables, logits, fraction = guarded_solution(config, _logits_at(table), solution, DESTRUCTIVE, CLICKS, 0.49)
    assert fraction == 0.25 and np.array_equal(variables, 0.25 * solution) and logits is RESPECTING
    # Nothing acceptable on the way: the network's own answer, with the variables reset to 0.
    table[0.25] = DESTRUCTIVE
    variables, logits, fraction = guarded_solution(config, _logits_at(table), solution, DESTRUCTIVE, CLICKS, 0.49)
    assert fraction == 0.0 and not variables.any() and logits is NETWORK


def test_resolve_guard():
    assert resolve_guard(None, False) is None and resolve_guard(False, True) is None
    assert resolve_guard(None, True) == GuardConfig() and resolve_guard(True, False) == GuardConfig()
    custom = GuardConfig(radius=0.1)
    assert resolve_guard(custom, False) is custom
    with pytest.raises(TypeError):
        resolve_guard("yes", False)


@pytest.fixture(scope="module")
def image(box_image):
    return box_image


@pytest.mark.parametrize("mode", ["f-BRS-A", "f-BRS-B", "f-BRS-C"])
def test_paper_modes_are_unguarded_and_guarded_variants_with_the_guard_off_are_identical(tiny_model, image, mode):
    paper = fbrs.create_predictor(mode, tiny_model, zoom_in_target_size=96)
    assert paper.refiner.guard is None
    guarded = fbrs.create_predictor(f"{mode}-guarded", tiny_model, zoom_in_target_size=96)
    assert guarded.refiner.guard == GuardConfig()
    unguarded = fbrs.create_predictor(f"{mode}-guarded", tiny_model, zoom_in_target_size=96, guard=False)
    clicks = [(35, 50, True), (5, 5, False), (40, 60, True)]
    for predictor in (paper, guarded, unguarded):
        predictor.set_image(image)
    for y, x, positive in clicks:
        expected = paper.add_click(y, x, positive)
        np.testing.assert_array_equal(unguarded.add_click(y, x, positive), expected)
        result = guarded.add_click(y, x, positive)
        assert result.shape == expected.shape and guarded.refiner.last_guard_fraction in (None, 0.0, 0.25, 0.5, 1.0)


# A large leak (the right third of the frame) with a negative click in it: removing all of it is the
# correction the clicks ask for, far from every click but on the negative click's side.
LEAK = torch.zeros_like(OBJECT)
LEAK[..., 44:] = True
LEAK_CLICKS = [[Click(32, 28, True), Click(32, 54, False)]]


def test_the_signed_guard_counts_only_flips_against_the_nearest_click():
    plain, signed = GuardConfig(), GuardConfig(signed=True)
    network, removed = _logits(OBJECT | LEAK), _logits(OBJECT)
    assert far_change(removed, network, LEAK_CLICKS, plain, 0.49) > 0.3  # the unsigned guard rejects it
    assert far_change(removed, network, LEAK_CLICKS, signed, 0.49) == 0.0
    # Losing the object behind the positive click still counts.
    assert far_change(DESTRUCTIVE, NETWORK, CLICKS, signed, 0.49) > 0.5


def test_an_insisting_click_may_change_more():
    config = GuardConfig(insist=1.0)
    solution = np.ones(8, dtype=np.float32)
    table = {0.0: NETWORK, 1.0: DESTRUCTIVE, 0.5: DESTRUCTIVE, 0.25: DESTRUCTIVE}
    insisting = [[Click(32, 28, True), Click(32, 45, False), Click(33, 46, False)]]

    def fraction(previous, clicks):
        return guarded_solution(config, _logits_at(table), solution, DESTRUCTIVE, clicks, 0.49, previous)[2]

    assert fraction(0.0, insisting) == 1.0  # the previous click was rejected and this one is next to it
    assert fraction(1.0, insisting) == 0.0 and fraction(None, insisting) == 0.0  # nothing was rejected before
    assert fraction(0.0, [[Click(32, 28, True), Click(32, 45, False), Click(33, 46, True)]]) == 0.0  # other label
    assert fraction(0.0, [[Click(32, 28, True), Click(32, 45, False), Click(2, 2, False)]]) == 0.0  # elsewhere
    no_insisting = GuardConfig(insist=None)
    assert guarded_solution(no_insisting, _logits_at(table), solution, DESTRUCTIVE, insisting, 0.49, 0.0)[2] == 0.0
    # The default lets an insisting click change up to 0.3 far away, not wreck the mask.
    assert guarded_solution(GuardConfig(), _logits_at(table), solution, DESTRUCTIVE, insisting, 0.49, 0.0)[2] == 0.0


def test_the_previous_mask_rule_sees_a_collapse_near_old_clicks():
    # Late in a session most of the object is near some click: the first rule no longer sees a hole punched
    # around an old positive click, the comparison with the previous click's mask does.
    old_clicks = [Click(32, 28, True), Click(32, 18, True), Click(22, 28, True), Click(42, 28, True)]
    clicks = [old_clicks + [Click(32, 45, False)]]
    hole = _logits(OBJECT & ~BUMP & ~_disc(32, 18, 7))
    previous = _logits(OBJECT)
    assert far_change(hole, NETWORK, clicks, GuardConfig(), 0.49) <= 0.2  # accepted by the first rule
    solution = np.ones(8, dtype=np.float32)
    table = {0.0: NETWORK, 1.0: hole, 0.5: RESPECTING, 0.25: RESPECTING}

    def fraction(config: GuardConfig, previous_logits: torch.Tensor | None) -> float:
        return guarded_solution(config, _logits_at(table), solution, hole, clicks, 0.49, None, previous_logits)[2]

    assert fraction(GuardConfig(), previous) == 1.0  # the rule is off by default
    assert fraction(GuardConfig(previous_far_change=0.1), previous) == 0.5
    assert fraction(GuardConfig(previous_far_change=0.1), None) == 1.0  # no previous mask in this frame
    assert fraction(GuardConfig(previous_far_change=0.3), previous) == 1.0  # a small enough change
    # Compared with the previous mask, not the network: had the user's mask the hole already, it is kept.
    assert fraction(GuardConfig(previous_far_change=0.1), _logits(OBJECT & ~_disc(32, 18, 7))) == 1.0


def test_the_refiner_keeps_the_previous_answer_in_its_state(tiny_model, image):
    predictor = fbrs.create_predictor("f-BRS-B-guarded", tiny_model, guard=GuardConfig(previous_far_change=0.2))
    predictor.set_image(image)
    predictor.add_click(30, 40, True)
    first = predictor.get_state()
    second = predictor.add_click(10, 10, False)
    assert first.refiner["previous_logits"] is not None
    predictor.undo()
    np.testing.assert_array_equal(predictor.add_click(10, 10, False), second)
