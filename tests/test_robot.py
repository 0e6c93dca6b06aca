"""The click robot against the original Clicker's clicks (reference clicker.npz / units.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fbrs.evaluation.metrics import iou
from fbrs.evaluation.robot import ClickRobot
from fbrs.inference.clicks import Click

CASES = ("astronaut", "coffee", "horse_with_ignore")


@pytest.fixture(scope="module")
def clicker_golden(reference_dir):
    with np.load(reference_dir / "clicker.npz") as archive:
        return {key: archive[key] for key in archive.files}


@pytest.mark.parametrize("case", CASES)
def test_robot_clicks_match_original_clicker(clicker_golden, case):
    labels = clicker_golden[f"{case}__gt"]
    robot = ClickRobot.from_labels(labels)
    clicks = [robot.next_click(pred) for pred in clicker_golden[f"{case}__pred_masks"]]
    expected = [Click(int(y), int(x), bool(p)) for p, y, x in clicker_golden[f"{case}__clicks"]]
    assert clicks == expected
    assert robot.clicks == expected


@pytest.mark.parametrize("case", CASES)
def test_iou_matches_original_get_iou(clicker_golden, case):
    labels = clicker_golden[f"{case}__gt"]
    ours = [iou(labels == 1, pred, labels == -1) for pred in clicker_golden[f"{case}__pred_masks"]]
    np.testing.assert_allclose(ours, clicker_golden[f"{case}__get_iou"], rtol=1e-12, atol=0)


def test_repeated_empty_prediction_moves_to_the_next_unclicked_pixel(clicker_golden):
    # The original started from an initial click +(100, 150) and then got three empty predictions.
    robot = ClickRobot.from_labels(clicker_golden["coffee__gt"])
    robot.add_click(Click(100, 150, True))
    empty = np.zeros_like(clicker_golden["coffee__gt"], dtype=bool)
    clicks = [robot.next_click(empty) for _ in range(3)]
    expected = [Click(int(y), int(x), bool(p)) for p, y, x in clicker_golden["coffee_repeat_empty_pred__clicks"]]
    assert clicks == expected


def test_units_json_robot_clicks_agree_with_npz(reference_dir, clicker_golden):
    units = json.loads((reference_dir / "units.json").read_text())["clicker_robot_clicks [is_positive,y,x]"]
    for case in CASES:
        assert units[case] == clicker_golden[f"{case}__clicks"].tolist()


def test_perfect_prediction_gives_negative_click_at_origin():
    gt = np.zeros((6, 7), bool)
    gt[2:5, 3:6] = True
    robot = ClickRobot(gt)
    assert robot.next_click(gt) == Click(0, 0, False)


def test_first_click_is_the_centre_of_a_square_object_and_positive():
    gt = np.zeros((21, 21), bool)
    gt[5:16, 5:16] = True  # 11x11 square centred at (10, 10)
    click = ClickRobot(gt).next_click(np.zeros_like(gt))
    assert click == Click(10, 10, True)


def test_ignored_pixels_never_receive_clicks():
    gt = np.zeros((20, 20), bool)
    gt[2:18, 2:18] = True
    ignore = np.zeros_like(gt)
    ignore[5:15, 5:15] = True  # the deepest part of the object is ignored
    robot = ClickRobot(gt, ignore)
    for _ in range(10):
        click = robot.next_click(np.zeros_like(gt))
        assert not ignore[click.y, click.x]
        assert gt[click.y, click.x] and click.is_positive


def test_shape_mismatch_is_reported():
    robot = ClickRobot(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="differs"):
        robot.next_click(np.ones((4, 5), bool))
