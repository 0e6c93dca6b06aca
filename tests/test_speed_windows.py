"""The windowed f-BRS gradient equals the whole-map gradient; the window planner covers what it must."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fbrs
from fbrs.inference.brs.objective import BRSConfig, ClickObjective, WindowedClickObjective
from fbrs.inference.brs.windows import loss_support, plan_windows
from fbrs.inference.clicks import Click, click_squares, points_tensor

INSERTIONS = ["after_backbone", "after_aspp", "after_decoder"]


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    # Non-trivial BatchNorm statistics, so that the border zero padding changes the output.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    return _randomised(fbrs.build_model("tiny_test"))


# Clicks in the interior, at the borders and corners (windows must stop at the map edge exactly),
# two clicks close together (one window, shared ownership), and a click on row 0 (no square at all).
CLICK_SETS = {
    "interior": [Click(30, 40, True), Click(50, 70, False)],
    "borders": [Click(1, 1, True), Click(126.6, 158.2, False), Click(35, 159, True), Click(127, 3, False)],
    "close_pair": [Click(30, 40, True), Click(32, 42, False), Click(33.5, 39.5, True)],
    "row_zero": [Click(0, 20, True), Click(40, 50, True)],
}


def _objectives(model, insertion, clicks, with_flip):
    height, width = 128, 160
    torch.manual_seed(1)
    image = torch.randn(1, 3, height, width)
    clicks_lists = [clicks]
    if with_flip:
        image = torch.cat([image, torch.flip(image, dims=[3])])
        clicks_lists.append([c.moved(c.y, width - c.x - 1) for c in clicks])
    with torch.no_grad():
        features, skip = model.features_at(insertion, image, points_tensor(clicks_lists))
    positive, negative = click_squares(clicks_lists, height, width)
    batch = image.shape[0]

    def unpack(x):
        scale, bias = torch.chunk(x, 2)
        return (1 + scale.view(batch, -1, 1, 1), bias.view(batch, -1, 1, 1)), 1e-3 * torch.sum(x**2)

    def logits_fn(scale, bias):
        return model.logits_from(insertion, features * scale + bias, skip, (height, width))

    def start_fn(scale, bias):
        return model.nonlocal_part(insertion, features * scale + bias, skip)

    low_size = tuple((skip if skip is not None else features).shape[2:])
    radius = model.local_radius(insertion)
    config = BRSConfig(min_iou_diff=0.0, prob_threshold=1.1)  # never exit early: always a gradient
    dense = ClickObjective(config, logits_fn, unpack, positive, negative)
    windowed = WindowedClickObjective(
        config, start_fn, lambda x: model.local_logits(insertion, x), (height, width),
        lambda: plan_windows(loss_support(positive, negative, low_size), radius, max_area_fraction=1.0),
        unpack, positive, negative,
    )
    channels = model.insertion_channels(insertion)
    return dense, windowed, batch * 2 * channels


@pytest.mark.parametrize("insertion", INSERTIONS)
@pytest.mark.parametrize("click_set", list(CLICK_SETS))
def test_windowed_gradient_equals_whole_map_gradient(tiny_model, insertion, click_set):
    dense, windowed, size = _objectives(tiny_model, insertion, CLICK_SETS[click_set], with_flip=True)
    x = np.random.default_rng(0).normal(0, 0.3, size)
    dense_value, dense_gradient = dense(x)
    windowed_value, windowed_gradient = windowed(x)
    windows = windowed._windows
    assert windows.count > 0 and windows.height < 32 and windows.width < 40  # real windows, not whole maps
    assert np.abs(dense_gradient).max() > 1e-4  # the comparison below is not between two zeros
    np.testing.assert_allclose(windowed_value, dense_value, rtol=1e-6)
    np.testing.assert_allclose(windowed_gradient, dense_gradient, rtol=1e-4, atol=1e-7 * np.abs(dense_gradient).max())
    torch.testing.assert_close(windowed.best_logits, dense.best_logits, atol=1e-6, rtol=0)


def test_windowed_gradient_on_mobilenet_default_architecture():
    torch.manual_seed(0)
    model = _randomised(fbrs.build_model("mobilenetv2_dh128"))
    clicks = [Click(30, 40, True), Click(60, 90, False), Click(3, 94, True)]
    dense, windowed, size = _objectives(model, "after_aspp", clicks, with_flip=True)
    x = np.random.default_rng(1).normal(0, 0.1, size)
    _, dense_gradient = dense(x)
    _, windowed_gradient = windowed(x)
    assert model.local_radius("after_aspp") == 4
    assert windowed._windows.count == 6 and windowed._windows.height <= 11 and windowed._windows.width <= 11
    # Windows that do not overlap give the whole-map gradient bit for bit (see WindowedClickObjective).
    np.testing.assert_array_equal(windowed_gradient, dense_gradient)


def test_windows_reach_radius_past_the_support_and_own_it_once():
    support = np.zeros((2, 30, 40), dtype=bool)
    support[0, 10:12, 10:13] = True  # interior
    support[0, 0:2, 37:40] = True  # top-right corner
    support[1, 28:30, 0:3] = True  # bottom-left corner, other batch item
    support[1, 14:17, 20:22] = True
    radius = 3
    windows = plan_windows(support, radius, max_area_fraction=1.0)
    assert windows.count == 4 and windows.height == 3 + 2 * radius and windows.width == 3 + 2 * radius
    ownership = np.zeros(support.shape, dtype=int)
    for p in range(windows.count):
        item, top, left = int(windows.batch_index[p]), int(windows.top[p]), int(windows.left[p])
        assert 0 <= top and top + windows.height <= 30 and 0 <= left and left + windows.width <= 40
        owned = windows.owner[p, 0].numpy() > 0
        ownership[item, top : top + windows.height, left : left + windows.width] += owned
        rows, cols = np.nonzero(owned)
        # Every owned pixel has `radius` pixels of context inside the window, or the map border.
        assert np.all((rows >= radius) | (top == 0)) and np.all((cols >= radius) | (left == 0))
        assert np.all((rows < windows.height - radius) | (top + windows.height == 30))
        assert np.all((cols < windows.width - radius) | (left + windows.width == 40))
    np.testing.assert_array_equal(ownership, support.astype(int))


def test_window_planner_falls_back_to_whole_maps_when_windows_are_not_smaller():
    support = np.zeros((1, 20, 20), dtype=bool)
    support[0, ::6, ::6] = True
    whole = plan_windows(support, radius=4)
    assert (whole.count, whole.height, whole.width) == (1, 20, 20) and bool(whole.owner.all())
    assert plan_windows(np.zeros((1, 20, 20), dtype=bool), radius=4).count == 0


def test_loss_support_is_where_the_upsampling_reads():
    positive = torch.zeros(1, 1, 97, 129)
    negative = torch.zeros_like(positive)
    positive[0, 0, 47:50, 63:66] = 1
    support = loss_support(positive, negative, (25, 33))
    # 47..49 * 24/96 = 11.75..12.25 -> rows 11..13; 63..65 * 32/128 = 15.75..16.25 -> cols 15..17.
    rows, cols = np.nonzero(support[0])
    assert set(rows) == {11, 12, 13} and set(cols) == {15, 16, 17}


@pytest.mark.parametrize("mode", ["f-BRS-A", "f-BRS-B", "f-BRS-C"])
def test_predictor_with_windowed_gradient_matches_whole_map_gradient(tiny_model, mode):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(72, 96, 3), dtype=np.uint8)
    image[20:50, 30:70] = rng.integers(180, 255, size=(30, 40, 3), dtype=np.uint8)
    clicks = [(35, 50, True), (10, 10, False), (45, 65, True), (60, 90, False)]
    results = []
    for windowed in (True, False):
        predictor = fbrs.Predictor(tiny_model, mode=mode, zoom_in_target_size=96)
        predictor.refiner.windowed_gradient = windowed
        predictor.set_image(image)
        results.append([predictor.add_click(*click) for click in clicks])
        results[-1].append(list(predictor.refiner.last_loss_values))
    for windowed_probs, dense_probs in zip(results[0][:-1], results[1][:-1], strict=True):
        np.testing.assert_allclose(windowed_probs, dense_probs, atol=1e-3)
    np.testing.assert_allclose(results[0][-1][:2], results[1][-1][:2], rtol=1e-4)
