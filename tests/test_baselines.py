"""Classical baselines (fbrs.baselines): segmentation of synthetic shapes, the predictor interface
(undo, state, errors), the seeds, and the algorithmic guarantees (star convexity, GrowCut = automaton)."""

from __future__ import annotations

import numpy as np
import pytest

from fbrs.baselines.growcut import GrowCutPredictor, attack_force
from fbrs.baselines.seeds import SEED_RADIUS, click_seeds, disk_seeds
from fbrs.baselines.star_convexity import euclidean_parents, geodesic_parents
from fbrs.errors import FbrsError, InvalidClickError, InvalidImageError
from fbrs.evaluation.metrics import iou
from fbrs.registry import PREDICTORS

NAMES = PREDICTORS.names(family="baseline")


def two_colour_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy orange ellipse on a noisy blue background: (image (H, W, 3) uint8, mask (H, W) bool)."""
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - 0.45 * height) / (0.3 * height)) ** 2 + ((cols - 0.55 * width) / (0.3 * width)) ** 2 <= 1
    image = np.where(mask[..., None], [230, 140, 40], [40, 70, 200]).astype(np.float64)
    image += np.random.default_rng(seed).normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def mask_centre(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.mean()), int(cols.mean())


@pytest.mark.parametrize("name", NAMES)
def test_registered_without_model_and_ignores_learned_mode_options(name):
    assert PREDICTORS.meta(name)["needs_model"] is False
    predictor = PREDICTORS.get(name)(model=None, zoom_in=True, with_flip=False)
    assert predictor.clicks == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(90, 120), (420, 560)], ids=["full-resolution", "downscaled"])
def test_click_inside_two_colour_shape_gives_the_shape(name, shape):
    image, mask = two_colour_image(*shape)
    predictor = PREDICTORS.get(name)()
    predictor.set_image(image)
    scores = predictor.add_click(*mask_centre(mask), True)
    assert scores.shape == mask.shape and scores.dtype == np.float32
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert iou(mask, scores > 0.49) > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_negative_click_removes_a_same_coloured_second_object(name):
    # Two separate discs of the same colour: a positive click on the left one, a negative click on the
    # right one; the clicked seeds must hold and the right disc's centre must end up background.
    rows, cols = np.mgrid[:80, :160]
    left = (rows - 40) ** 2 + (cols - 40) ** 2 <= 20**2
    right = (rows - 40) ** 2 + (cols - 120) ** 2 <= 20**2
    image = np.where((left | right)[..., None], [220, 220, 60], [30, 30, 30]).astype(np.uint8)
    predictor = PREDICTORS.get(name)()
    predictor.set_image(image)
    predictor.add_click(40, 40, True)
    scores = predictor.add_click(40, 120, False)
    assert scores[40, 40] > 0.49
    assert scores[40, 120] <= 0.49
    assert iou(left, scores > 0.49) > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_undo_returns_the_previous_prediction_and_state_round_trips(name):
    image, mask = two_colour_image(60, 80, seed=1)
    predictor = PREDICTORS.get(name)()
    assert predictor.undo() is None
    predictor.set_image(image)
    first = predictor.add_click(*mask_centre(mask), True)
    state = predictor.get_state()
    second = predictor.add_click(2, 3, False)
    third = predictor.add_click(30, 20, True)
    np.testing.assert_array_equal(predictor.undo(), second)
    np.testing.assert_array_equal(predictor.undo(), first)
    assert [(c.y, c.x, c.is_positive) for c in predictor.clicks] == [(*map(float, mask_centre(mask)), True)]
    assert predictor.undo() is None
    assert predictor.clicks == []

    predictor.set_state(state)
    assert len(predictor.clicks) == 1
    predictor.add_click(2, 3, False)
    np.testing.assert_array_equal(predictor.add_click(30, 20, True), third)
    predictor.reset()
    assert predictor.clicks == []


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_errors_naming_the_problem(name):
    predictor = PREDICTORS.get(name)()
    with pytest.raises(InvalidImageError, match="set_image"):
        predictor.add_click(1, 1, True)
    with pytest.raises(InvalidImageError):
        predictor.set_image(np.zeros((10, 10, 2), np.uint8))
    predictor.set_image(np.zeros((30, 40), np.uint8))  # grayscale is accepted
    with pytest.raises(InvalidClickError, match=r"y=30, x=5.*height 30, width 40"):
        predictor.add_click(30, 5, True)
    with pytest.raises(InvalidClickError, match=r"x=-1"):
        predictor.add_click(3, -1, False)
    with pytest.raises(InvalidClickError, match="non-finite"):
        predictor.add_click(float("nan"), 2, True)
    with pytest.raises(FbrsError):
        predictor.add_click("a", 2, True)
    assert predictor.clicks == []


def test_seeds_are_disks_of_the_stated_radius_and_newer_clicks_win():
    disk = disk_seeds([(20, 20)], (40, 40), SEED_RADIUS)
    rows, cols = np.nonzero(disk)
    assert SEED_RADIUS == 5.0 and disk.sum() == 81  # lattice points within radius 5
    assert np.hypot(rows - 20, cols - 20).max() <= SEED_RADIUS
    positive, negative = click_seeds([(20, 20, True), (23, 20, False)], (40, 40))
    assert not (positive & negative).any()
    assert negative[23, 20] and negative[20, 20] and not positive[20, 20]
    assert negative[0].all() and negative[:, -1].all()  # the image frame is background
    positive, negative = click_seeds([(0, 0, True)], (40, 40), border_background=False)
    assert positive[0, 0] and not negative.any()


def test_clicks_near_the_border_override_the_background_frame():
    image, mask = two_colour_image(60, 80, seed=2)
    for name in NAMES:
        predictor = PREDICTORS.get(name)()
        predictor.set_image(image)
        assert predictor.add_click(0, 0, True)[0, 0] == 1.0


def _star_chains_hold(foreground: np.ndarray, steps: np.ndarray) -> bool:
    """Every foreground pixel's parent is foreground too."""
    rows, cols = np.nonzero(foreground)
    return bool(foreground[rows + steps[rows, cols, 0], cols + steps[rows, cols, 1]].all())


@pytest.mark.parametrize("name", ["esc", "gsc"])
def test_star_convexity_constraint_holds_on_a_non_convex_shape(name):
    # A "C" clicked on its left side: not star-convex in the Euclidean sense (the straight line to its
    # right part crosses the hole), but star-convex along geodesics that follow the colour.
    rows, cols = np.mgrid[:100, :100]
    ring = (np.hypot(rows - 50, cols - 50) <= 40) & (np.hypot(rows - 50, cols - 50) >= 22)
    shape = ring & ~((cols > 50) & (np.abs(rows - 50) < 8))
    image = np.where(shape[..., None], [200, 60, 60], [60, 60, 200]).astype(np.uint8)
    plain = PREDICTORS.get("graphcut")()
    plain.set_image(image)
    assert iou(shape, plain.add_click(50, 18, True) > 0.49) > 0.95

    predictor = PREDICTORS.get(name)()
    predictor.set_image(image)
    foreground = predictor.add_click(50, 18, True) > 0.49
    positive, _ = click_seeds([(50, 18, True)], image.shape[:2])
    if name == "esc":
        steps = euclidean_parents(positive)
        assert not _star_chains_hold(shape, steps)  # so the plain graph cut answer is not allowed
        assert _star_chains_hold(foreground, steps)
        assert iou(shape, foreground) < 0.95
    else:
        steps = geodesic_parents(predictor._graph, predictor._lengths, positive)
        assert _star_chains_hold(foreground, steps)
        assert iou(shape, foreground) > 0.95


def test_euclidean_parents_lead_to_the_nearest_seed():
    positive = np.zeros((30, 40), bool)
    positive[5, 5] = positive[20, 33] = True
    steps = euclidean_parents(positive)
    for start, seed in (((29, 0), (5, 5)), ((0, 39), (20, 33)), ((25, 20), (20, 33))):
        y, x = start
        for _ in range(100):
            if positive[y, x]:
                break
            dy, dx = steps[y, x]
            assert max(abs(dy), abs(dx)) == 1
            y, x = y + dy, x + dx
        assert (y, x) == seed


def test_growcut_equals_the_converged_cellular_automaton():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (14, 17, 3)).astype(np.uint8)
    positive = np.zeros((14, 17), bool)
    negative = np.zeros((14, 17), bool)
    positive[3, 4] = positive[10, 12] = negative[7, 1] = negative[0, 16] = True

    # The automaton as published: synchronous sweeps over the Moore neighbourhood until nothing changes.
    colours = image.astype(np.float64)
    strength = (positive | negative).astype(np.float64)
    label = np.where(positive, 1, np.where(negative, 2, 0))
    max_distance = np.sqrt(3) * 255
    for _ in range(10_000):
        new_strength, new_label = strength.copy(), label.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == dx == 0:
                    continue
                shifted = np.full_like(strength, -1.0)
                shifted_label = np.zeros_like(label)
                shifted_colour = np.zeros_like(colours)
                target = (slice(max(dy, 0), 14 + min(dy, 0)), slice(max(dx, 0), 17 + min(dx, 0)))
                source = (slice(max(-dy, 0), 14 + min(-dy, 0)), slice(max(-dx, 0), 17 + min(-dx, 0)))
                shifted[target], shifted_label[target] = strength[source], label[source]
                shifted_colour[target] = colours[source]
                attack = attack_force(np.linalg.norm(colours - shifted_colour, axis=-1), max_distance) * shifted
                wins = attack > new_strength
                new_strength[wins], new_label[wins] = attack[wins], shifted_label[wins]
        if np.array_equal(new_label, label) and np.allclose(new_strength, strength, rtol=0, atol=0):
            break
        strength, label = new_strength, new_label

    predictor = GrowCutPredictor(border_background=False)
    predictor._prepare(image)
    distance, _, _ = predictor._graph.shortest_paths(predictor._lengths, positive | negative)
    np.testing.assert_allclose(np.exp(-distance), strength, rtol=1e-4)
    np.testing.assert_array_equal(predictor._segment(positive, negative) == 1.0, label == 1)


def test_real_grabcut_image_with_robot_clicks(data_dir):
    from fbrs.evaluation.datasets import load_dataset
    from fbrs.evaluation.robot import ClickRobot

    sample = load_dataset(data_dir / "GrabCut")[0]
    for name in NAMES:
        predictor = PREDICTORS.get(name)()
        predictor.set_image(sample.image)
        robot = ClickRobot(sample.mask, sample.ignore)
        prediction = np.zeros(sample.mask.shape, bool)
        for _ in range(3):
            click = robot.next_click(prediction)
            scores = predictor.add_click(click.y, click.x, click.is_positive)
            assert scores.shape == sample.mask.shape
            assert scores[click.y, click.x] == (1.0 if click.is_positive else 0.0)
            prediction = scores > 0.49
        # Better than the trivial answers (nothing, everything): the clicks did find the object.
        everything = np.ones_like(prediction)
        assert iou(sample.mask, prediction, sample.ignore) > iou(sample.mask, everything, sample.ignore)
