"""Unit goldens without a network: Zoom-In, bbox helpers, points tensor, BRS loss (units.json/units.npz)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fbrs.inference.bbox import bbox_from_mask, bbox_iou, clamp_bbox, clicks_inside_roi, expand_bbox, object_roi
from fbrs.inference.brs.loss import batch_mask_iou, click_mask_loss
from fbrs.inference.clicks import Click, points_tensor
from fbrs.inference.zoom_in import ZoomIn, ZoomInConfig


@pytest.fixture(scope="module")
def units(reference_dir):
    return json.loads((reference_dir / "units.json").read_text()), np.load(reference_dir / "units.npz")


def _clicks(rows) -> list[Click]:
    return [Click(float(y), float(x), bool(positive)) for positive, (y, x) in rows]


def test_zoom_in_cases(units):
    data, arrays = units
    cases = data["zoom_in_cases"]
    assert len(cases) == 7
    for case in cases:
        name = case["name"]
        shape = case["image_shape"]
        if name == "tiny_full":
            image = torch.from_numpy(arrays["zoom_tiny_full__image"])
        else:
            image = torch.from_numpy(np.random.RandomState(123).rand(*shape).astype(np.float32))
            np.testing.assert_array_equal(image[:, :, :1].numpy(), arrays["zoom_default_image_first_row"])
        kwargs = case["zoom_in_kwargs"]
        zoom = ZoomIn(ZoomInConfig(
            target_size=kwargs["target_size"],
            expansion_ratio=kwargs.get("expansion_ratio", 1.4),
            min_crop_size=kwargs.get("min_crop_size", 200),
        ))
        previous = np.zeros(shape[2:], dtype=np.float32)
        box = case["prev_prob_box_r0r1c0c1 (value 0.9, top-left corner 0.5)"]
        if box is not None:
            r0, r1, c0, c1 = box
            previous[r0 : r1 + 1, c0 : c1 + 1] = 0.9
            previous[r0, c0] = 0.5
        if name == "tiny_full":
            np.testing.assert_array_equal(previous, arrays["zoom_tiny_full__prev_probs"][0, 0])
        zoom._previous_probs = previous
        out_image, out_clicks = zoom.transform(image, _clicks(case["clicks_in"]))
        assert (list(zoom.roi) if zoom.roi is not None else None) == case["object_roi"], name
        assert zoom.image_changed == case["image_changed"], name
        assert list(out_image.shape) == case["out_image_shape"], name
        expected_clicks = _clicks(case["clicks_out"])
        assert [c.is_positive for c in out_clicks] == [c.is_positive for c in expected_clicks], name
        assert [v for c in out_clicks for v in c.coords] == pytest.approx(
            [v for c in expected_clicks for v in c.coords], rel=1e-12), name
        assert out_image.double().sum().item() == pytest.approx(case["out_image_sum_f64"], rel=1e-6), name
        rows, cols = out_image.shape[2:]
        grid_y, grid_x = torch.meshgrid(torch.linspace(0, 1, rows), torch.linspace(0, 1, cols), indexing="ij")
        inverse_input = (0.25 + 0.5 * grid_y * grid_x)[None, None].float()
        restored = zoom.inverse(inverse_input, tuple(shape[2:]))
        assert list(restored.shape) == case["inv_out_shape"], name
        assert restored.double().sum().item() == pytest.approx(case["inv_out_sum_f64"], rel=1e-6), name
        key = f"zoom_{name}__inv_out_every8"
        if key in arrays.files:
            np.testing.assert_allclose(restored[..., ::8, ::8].numpy(), arrays[key], atol=1e-6, err_msg=name)
        if name == "tiny_full":
            np.testing.assert_allclose(out_image.numpy(), arrays["zoom_tiny_full__out_image"], atol=1e-6)
            np.testing.assert_allclose(restored.numpy(), arrays["zoom_tiny_full__inv_out"], atol=1e-6)


def test_bbox_helpers(units):
    expected = units[0]["bbox_helpers"]
    mask = np.zeros((240, 320), dtype=bool)
    mask[50:60, 70:100] = True
    box = bbox_from_mask(mask)
    assert list(box) == expected["get_bbox_from_mask(rows50..59,cols70..99)"]
    assert list(expand_bbox(box, 1.4, 200)) == expected["expand_bbox(that,1.4,200)"]
    assert list(expand_bbox(box, 1.4, None)) == expected["expand_bbox(that,1.4,None)"]
    assert list(clamp_bbox(expand_bbox(box, 1.4, 200), 0, 239, 0, 319)) == expected["clamp_bbox(expand,0,239,0,319)"]
    assert bbox_iou((0, 99, 0, 99), (50, 149, 0, 99)) == pytest.approx(
        expected["get_bbox_iou((0,99,0,99),(50,149,0,99))"], rel=1e-12)
    roi = object_roi(mask, [Click(200, 300, True)], 1.4, 200)
    assert list(roi) == expected["get_object_roi(mask, [pos (200,300)], 1.4, 200)"]
    assert clicks_inside_roi((10, 100, 10, 100), [Click(100, 50, True)]) is expected[
        "check_object_roi((10,100,10,100), [pos (100,50)])"]
    assert clicks_inside_roi((10, 100, 10, 100), [Click(99, 50, True), Click(500, 500, False)]) is expected[
        "check_object_roi((10,100,10,100), [pos (99,50), neg (500,500)])"]


def test_points_tensor(units):
    cases = units[0]["metrics"]["get_points_nd"]
    clicks = _clicks(cases["clicks_input_(is_positive,(y,x))"])
    flipped = [c.moved(c.y, 60 - c.x - 1) for c in clicks]
    for limit in (None, 8, 5, 2):
        expected = cases[f"net_clicks_limit={limit}, with flip (W=60)"]
        ours = points_tensor([clicks, flipped], limit)
        np.testing.assert_array_equal(ours.numpy(), np.asarray(expected, dtype=np.float64), err_msg=str(limit))


def test_click_mask_loss(units):
    data, arrays = units
    expected = data["metrics"]["BRSMaskLoss(result=sigmoid(randn seed0 (1,1,50,60)), masks=brs_click_*_mask)"]
    loss, max_positive, max_negative = click_mask_loss(
        torch.from_numpy(arrays["brs_loss_result_probs"]),
        torch.from_numpy(arrays["brs_click_pos_mask"]),
        torch.from_numpy(arrays["brs_click_neg_mask"]),
    )
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-6)
    assert max_positive == pytest.approx(expected["f_max_pos"], rel=1e-6)
    assert max_negative == pytest.approx(expected["f_max_neg"], rel=1e-6)


def test_batch_mask_iou_skips_empty_unions(units):
    data, _ = units
    expected = data["metrics"]["metrics._compute_iou(astro_gt vs eroded5 ; empty vs empty)"]
    first = torch.zeros((2, 10, 10), dtype=torch.bool)
    second = torch.zeros_like(first)
    first[0, 2:8, 2:8] = True
    second[0, 3:7, 3:7] = True
    iou = batch_mask_iou(first, second)
    assert len(iou) == 1 == len(expected)
    assert iou.item() == pytest.approx(16 / 36)
