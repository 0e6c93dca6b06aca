"""Network goldens: checkpoint layout, regenerated weights, distance maps, logits (../shared/reference).

Everything here is a feed-forward computation, determined by the inputs. Measured against the goldens (made
on an AMD CPU) under ONEDNN_MAX_CPU_ISA = SSE41, AVX2, AVX512_CORE and the default (AMX) of an Intel Xeon,
1 and 2 threads (benchmarks/golden_spread.py): distance maps max |d| 6.0e-8 (tolerance 1e-6), base logits
4.4e-6 of max |logit| (1e-4), calibrated logits 8.3e-5 (1e-3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fbrs.models import build_model
from fbrs.models.distance_maps import distance_maps
from fbrs.models.reference_weights import build_reference_model, reference_state_dict, weights_sha256
from tests.reference_utils import normalise


@pytest.fixture(scope="module")
def net_outputs(reference_dir):
    return np.load(reference_dir / "net_outputs.npz")


@pytest.fixture(scope="module")
def reference_models():
    return {variant: build_reference_model(variant) for variant in ("base", "calibrated")}


def test_state_dict_layout_matches_original(reference_dir):
    expected = json.loads((reference_dir / "state_dict_keys.json").read_text())
    ours = [[key, list(value.shape), str(value.dtype).replace("torch.", "")]
            for key, value in build_model("resnet34_dh128").state_dict().items()]
    assert ours == expected


@pytest.mark.parametrize("variant", ["base", "calibrated"])
def test_regenerated_weights_checksum(reference_dir, variant):
    info = json.loads((reference_dir / "weights_info.json").read_text())
    key = {"base": "weights_sha256_float32_sorted_keys_excluding_num_batches_tracked",
           "calibrated": "weights_sha256_CALIBRATED_variant"}[variant]
    state = reference_state_dict(build_model("resnet34_dh128"), variant)
    assert weights_sha256(state) == info[key]


def test_distance_maps_match_reference(reference_dir):
    data = np.load(reference_dir / "dist_maps.npz")
    compared = 0
    for key in data.files:
        if not key.endswith("__torch"):
            continue
        stem = key[: -len("__torch")]
        points = torch.from_numpy(data[f"{stem.split('_ss')[0]}__points"])
        radius = 5.0 if "_nr5" in stem else 260.0
        scale = 0.25 if "_ss0.25" in stem else 1.0
        expected = data[key]
        ours = distance_maps(points, expected.shape[2], expected.shape[3], radius, scale).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0, err_msg=key)
        compared += 1
    assert compared == 9


def _cases(net_outputs):
    return [key[: -len("__points")] for key in net_outputs.files if key.endswith("__points")]


def test_network_logits_match_reference(net_outputs, reference_models):
    cases = _cases(net_outputs)
    assert len(cases) == 6
    for case in cases:
        image = normalise(net_outputs[f"{case.split('__')[0]}__image_uint8"])
        points = torch.from_numpy(net_outputs[f"{case}__points"])
        for variant, suffix in (("base", ""), ("calibrated", "_calibrated")):
            model = reference_models[variant]
            with torch.no_grad():
                logits = model(image, points).numpy()
                features, _ = model.features_at("after_decoder", image, points)
                lowres = model.head(features).numpy()
            expected = net_outputs[f"{case}__logits{suffix}"]
            expected_lowres = net_outputs[f"{case}__logits_lowres{suffix}"]
            tolerance = 1e-4 * np.abs(expected).max() if variant == "base" else 1e-3
            np.testing.assert_allclose(logits, expected, atol=tolerance, rtol=0, err_msg=f"{case} {variant}")
            np.testing.assert_allclose(lowres, expected_lowres, atol=tolerance, rtol=0, err_msg=f"{case} lowres")


def test_fusion_conv_and_normalisation_match_reference(net_outputs, reference_models):
    model = reference_models["calibrated"]
    for image_name in ("astronaut", "coffee"):
        image = normalise(net_outputs[f"{image_name}__image_uint8"])
        np.testing.assert_allclose(
            image[:, :, :8, :8].numpy(), net_outputs[f"{image_name}__image_nd_patch_r0-8_c0-8"], atol=1e-7
        )
        points = torch.from_numpy(net_outputs[f"{image_name}__p1__points"])
        with torch.no_grad():
            fused = model.fuse(image, model.dist_maps(image, points)).numpy()
        np.testing.assert_allclose(fused, net_outputs[f"{image_name}__p1__rgbconv_out"], atol=1e-5)


@pytest.mark.parametrize("insertion", ["after_backbone", "after_aspp", "after_decoder"])
def test_split_forward_equals_whole_forward(insertion):
    torch.manual_seed(0)
    model = build_model("tiny_test").eval()
    image = torch.randn(2, 3, 48, 64)
    points = torch.tensor([[[10.0, 20.0], [-1, -1]], [[5.0, 5.0], [30.0, 40.0]]])
    with torch.no_grad():
        whole = model(image, points)
        features, skip = model.features_at(insertion, image, points)
        assert features.shape[1] == model.insertion_channels(insertion)
        split = model.logits_from(insertion, features, skip, (48, 64))
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)
