"""Fine-tuning a SAM-family decoder (fbrs.training.sam_decoder, fbrs.training.sam_embeddings): the click
simulation is the SAM mode's own loop, the loss trains, the cache refuses what does not belong, and
`fbrs train-sam embed` / `fit` run end to end (tiny random model; the real one on a few real images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fbrs.cli import main
from fbrs.errors import CheckpointError, ConfigError, DatasetError
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.models.sam.checkpoint import load_iou_head, load_sam_decoder, read_sam_metadata, save_sam_decoder
from fbrs.models.sam.tiny import TINY_CONFIG, TinyImageEncoder, build_tiny_sam_model
from fbrs.training.data import TrainingData
from fbrs.training.sam_decoder import (
    SamTuneSection,
    TrainingObject,
    decoder_loss,
    fit_sam_decoder,
    load_sam_tune_config,
    simulate_clicks,
)
from fbrs.training.sam_embeddings import EmbeddingCache, fill_cache, images_to_encode
from tests.conftest import copy_training_subset

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sam_decoder_tune.toml"
CCP_IMAGES = ("0001", "0003", "0005", "0007", "0009", "0011", "0013", "0015")


def _box_object(image: np.ndarray, encoder: TinyImageEncoder) -> TrainingObject:
    gt = np.zeros(image.shape[:2], dtype=bool)
    gt[20:50, 30:70] = True
    return TrainingObject("box", encoder(image), gt, np.zeros_like(gt))


def test_the_simulated_clicks_are_the_sam_modes_own_loop(box_image):
    """What training feeds back must be what the `SAM` mode feeds back: the same robot clicks, the same
    low-res logits as the mask input, for each object of a batch."""
    model = build_tiny_sam_model(seed=1)
    encoder = TinyImageEncoder(TINY_CONFIG, seed=1)
    flipped = np.ascontiguousarray(box_image[::-1, ::-1])
    items = [_box_object(box_image, encoder), _box_object(flipped, encoder)]
    items[1].gt[:] = items[1].gt[::-1, ::-1]
    robots, mask_input = simulate_clicks(model.decoder, items, 4, np.random.default_rng(0))
    assert mask_input.shape == (2, 1, TINY_CONFIG.low_res_size, TINY_CONFIG.low_res_size)
    for position, item in enumerate(items):
        predictor = SamPredictor(model)
        result = evaluate_sample(
            predictor, Sample(box_image if position == 0 else flipped, item.gt, item.ignore, "box"),
            max_clicks=3, stop_at_target=False,
        )
        assert [(c.y, c.x, c.is_positive) for c in result.clicks] == [
            (c.y, c.x, c.is_positive) for c in robots[position].clicks[:3]
        ]
        assert torch.allclose(predictor._low_res, mask_input[position : position + 1], atol=1e-4)
    assert len(robots[0].clicks) == 4  # the trained pass answers the 4th click


def test_random_clicks_land_on_the_error_they_correct(box_image):
    model = build_tiny_sam_model(seed=1)
    item = _box_object(box_image, TinyImageEncoder(TINY_CONFIG, seed=1))
    robots, _ = simulate_clicks(model.decoder, [item], 6, np.random.default_rng(3), random_click_probability=1.0)
    clicks = robots[0].clicks
    assert len(clicks) == 6 and len({(c.y, c.x) for c in clicks}) == 6
    assert all(item.gt[c.y, c.x] == c.is_positive for c in clicks)  # a positive click inside, a negative outside


@pytest.mark.parametrize("num_clicks", [1, 3])
def test_the_loss_trains_the_decoder(box_image, num_clicks):
    """A few Adam steps on one object lower the loss (first click: the multimask outputs; later: output 0)."""
    model = build_tiny_sam_model(seed=2)
    decoder = model.decoder
    for parameter in decoder.parameters():
        parameter.requires_grad_(True)
    item = _box_object(box_image, TinyImageEncoder(TINY_CONFIG, seed=2))
    robots, mask_input = simulate_clicks(decoder, [item], num_clicks, np.random.default_rng(0))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    tune = SamTuneSection()
    losses = []
    for _ in range(40):
        loss, parts = decoder_loss(decoder, [item], robots, mask_input, tune)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["loss"])
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("num_clicks", [1, 3])
def test_iou_all_outputs_scores_every_output_after_the_first_click(box_image, num_clicks):
    """tune.iou_all_outputs: from the second click on the IoU term is the mean squared error of all four
    outputs' predictions against their real IoUs (what the output switch reads); the mask term and the first
    click are unchanged."""
    import dataclasses

    from fbrs.training.sam_decoder import hard_iou, logits_on_image, prompt_points

    model = build_tiny_sam_model(seed=2)
    item = _box_object(box_image, TinyImageEncoder(TINY_CONFIG, seed=2))
    robots, mask_input = simulate_clicks(model.decoder, [item], num_clicks, np.random.default_rng(0))
    tune = SamTuneSection()
    _, single = decoder_loss(model.decoder, [item], robots, mask_input, tune)
    _, every = decoder_loss(model.decoder, [item], robots, mask_input, dataclasses.replace(tune, iou_all_outputs=True))
    assert every["mask"] == pytest.approx(single["mask"])
    coords, labels = prompt_points([robots[0].clicks], [item.embedding.scale])
    with torch.no_grad():
        low_res, predicted = model.decoder(item.embedding.embedding, coords, labels, mask_input)
    target = torch.from_numpy(item.gt.astype(np.float32))
    valid = torch.ones_like(target)
    errors = [float((predicted[0, k] - hard_iou(logits_on_image(model.decoder, low_res[:, k : k + 1], item),
                                                target, valid)) ** 2) for k in range(low_res.shape[1])]
    scored = errors[1:] if num_clicks == 1 else errors
    assert every["iou_mse"] == pytest.approx(float(np.mean(scored)), rel=1e-4)
    if num_clicks > 1:
        assert single["iou_mse"] == pytest.approx(errors[0], rel=1e-4) and not np.isclose(errors[0], np.mean(errors))


def test_the_embedding_cache_round_trips_and_refuses_another_encoder(box_image, tmp_path):
    embedding = TinyImageEncoder(TINY_CONFIG)(box_image)
    cache = EmbeddingCache(tmp_path / "cache", "a" * 64)
    assert "set/one" not in cache
    cache.store("set/one", embedding)
    loaded = cache.load("set/one")
    assert "set/one" in cache and loaded.embedding.dtype == torch.float32
    assert torch.allclose(loaded.embedding, embedding.embedding, atol=2e-3)  # stored as float16
    assert (loaded.scale, loaded.image_size, loaded.resized_size) == (
        embedding.scale, embedding.image_size, embedding.resized_size
    )
    with pytest.raises(DatasetError, match="made by encoder aaaa"):
        EmbeddingCache(tmp_path / "cache", "b" * 64)
    with pytest.raises(DatasetError, match="no stored embedding for 'set/two'"):
        cache.load("set/two")
    with pytest.raises(ValueError, match="bad embedding key"):
        cache.path("../escape")


def test_bad_recipes_are_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="tune.random_click_probability"):
        load_sam_tune_config(CONFIG, ["tune.random_click_probability=1.5"])
    with pytest.raises(ConfigError, match="unknown config key 'tune.learning_rate'"):
        load_sam_tune_config(CONFIG, ["tune.learning_rate=1e-3"])


@pytest.fixture(scope="module")
def person_folder(data_dir: Path, tmp_path_factory) -> Path:
    return copy_training_subset(data_dir, "ccp_person", CCP_IMAGES, tmp_path_factory.mktemp("sam_tune_data"))


def _tiny_recipe(folder: Path, tmp_path: Path, *extra: str):
    decoder_path = save_sam_decoder(build_tiny_sam_model(seed=0).decoder, tmp_path / "tiny_decoder.safetensors")
    encoder_id = tmp_path / "tiny_encoder.id"  # the cache keys its folder by the encoder file's sha256
    encoder_id.write_text("tiny encoder, seed 0\n")
    return load_sam_tune_config(CONFIG, [
        f'data.sources=[{{path="{folder}"}}]', "data.max_side=96", "data.min_object_area=50",
        "data.validation_fraction=0.25", "tune.steps=3", "tune.batch_size=2", "tune.max_clicks=3",
        "validation.every_steps=2", "validation.max_objects=2", "validation.min_object_area=50",
        "validation.max_clicks=3", "run.checkpoint_every_steps=1", "run.log_every_steps=1",
        f'run.output_dir="{tmp_path / "run"}"', f'run.embeddings="{tmp_path / "embeddings"}"',
        f'run.init_decoder="{decoder_path}"', f'run.encoder="{encoder_id}"', *extra,
    ])


def test_fit_trains_validates_saves_and_resumes(person_folder, tmp_path):
    from fbrs.io_utils import file_sha256

    config = _tiny_recipe(person_folder, tmp_path)
    with pytest.raises(ConfigError, match="held-out images have no stored embedding"):
        fit_sam_decoder(config, log=lambda line: None)
    cache = EmbeddingCache(config.run.embeddings, file_sha256(config.run.encoder))
    data = TrainingData(config.data)
    assert data.validation_records, "the recipe must hold some images out"
    assert fill_cache(cache, images_to_encode(data), TinyImageEncoder(TINY_CONFIG), log=lambda line: None) == 8

    best = fit_sam_decoder(config, log=lambda line: None)
    output = Path(config.run.output_dir)
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "validation"] == [0, 2, 3]
    curves = json.loads((output / "validation_3.json").read_text())
    assert len(curves) == len(data.validation_objects(0, 50)[:2]) and all(len(c) == 3 for c in curves.values())
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["images"] == data.num_train_images for r in records if r["event"] == "step")
    assert best["step"] in (0, 2, 3) and 1 <= best["noc@90"] <= 3
    start = load_sam_decoder(config.run.init_decoder).state_dict()
    trained = load_sam_decoder(output / "step_3.safetensors").state_dict()
    changed = [k for k in start if not torch.equal(start[k], trained[k])]
    assert changed and not any(k.startswith("prompt_encoder.") for k in changed)  # train_prompt_encoder = false
    metadata = read_sam_metadata(output / "best.safetensors")
    assert metadata["parent_sha256"] == file_sha256(config.run.init_decoder) and "validation" in metadata

    more = _tiny_recipe(person_folder, tmp_path, "tune.steps=4")
    fit_sam_decoder(more, resume=True, log=lambda line: None)
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3, 4]


def test_cli_embeds_and_fits_the_real_model_on_real_images(person_folder, tmp_path, capsys):
    """`fbrs train-sam embed` with the bundled encoder, then `fit` from the bundled decoder, two steps."""
    sets = [f'data.sources=[{{path="{person_folder}"}}]', "data.validation_fraction=0.25",
            "tune.steps=2", "tune.batch_size=1", "tune.max_clicks=2", "validation.every_steps=2",
            "validation.max_objects=1", "validation.max_clicks=2", f'run.output_dir="{tmp_path / "run"}"',
            f'run.embeddings="{tmp_path / "embeddings"}"']
    flags = [item for value in sets for item in ("--set", value)]
    assert main(["train-sam", "embed", str(CONFIG), "--shard", "1", "--shards", "2", *flags]) == 0
    assert "encoded 4 images" in capsys.readouterr().out
    assert main(["train-sam", "embed", str(CONFIG), "--shard", "0", "--shards", "2", *flags]) == 0
    assert len(list((tmp_path / "embeddings").rglob("*.pt"))) == 8
    assert main(["train-sam", "fit", str(CONFIG), *flags]) == 0
    out = capsys.readouterr().out
    assert "best: step" in out and (tmp_path / "run" / "best.safetensors").is_file()
    assert load_sam_decoder(tmp_path / "run" / "best.safetensors").config.embed_dim == 256


def test_iou_head_only_leaves_every_mask_as_it_was(person_folder, tmp_path):
    """tune.iou_head_only: only the IoU head moves, so every mask output is the parent's, bit for bit."""
    from fbrs.io_utils import file_sha256

    config = _tiny_recipe(person_folder, tmp_path, "tune.iou_head_only=true", "tune.max_clicks=1", "tune.lr=1e-2",
                          "tune.steps=2")
    cache = EmbeddingCache(config.run.embeddings, file_sha256(config.run.encoder))
    fill_cache(cache, images_to_encode(TrainingData(config.data)), TinyImageEncoder(TINY_CONFIG), log=lambda line: None)
    fit_sam_decoder(config, log=lambda line: None)
    start = load_sam_decoder(config.run.init_decoder)
    trained = load_sam_decoder(Path(config.run.output_dir) / "step_2.safetensors")
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert changed and all(k.startswith("iou_head.") for k in changed)
    embedding = torch.randn(1, TINY_CONFIG.embed_dim, TINY_CONFIG.embedding_size, TINY_CONFIG.embedding_size)
    coords, labels = torch.tensor([[[40.0, 30.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    with torch.no_grad():
        (masks_before, iou_before), (masks_after, iou_after) = (
            start(embedding, coords, labels), trained(embedding, coords, labels)
        )
    assert torch.equal(masks_before, masks_after) and not torch.equal(iou_before, iou_after)
    # What ships is the best step's head alone, for the parent decoder file: laid over the parent it gives the
    # best step's decoder, every output; over another decoder file it is refused.
    output = Path(config.run.output_dir)
    head = output / "best_iou_head.safetensors"
    best = load_sam_decoder(output / "best.safetensors")
    overlaid = load_iou_head(load_sam_decoder(config.run.init_decoder), head, file_sha256(config.run.init_decoder))
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in overlaid.state_dict().items())
    assert read_sam_metadata(head)["step"] == read_sam_metadata(output / "best.safetensors")["step"]
    with pytest.raises(CheckpointError, match="IoU head of another decoder"):
        load_iou_head(start, head, file_sha256(output / "step_2.safetensors"))
    with pytest.raises(CheckpointError, match="holds only an IoU head"):
        load_sam_decoder(head)


def test_a_head_fit_can_start_from_another_head_and_validate_with_the_output_switch(person_folder, tmp_path):
    """run.init_iou_head lays a head file over the parent decoder before training (what step 0 holds, recorded
    in the provenance); validation.output_switch validates the SAM mode with the switch on."""
    from fbrs.io_utils import file_sha256
    from fbrs.models.sam.checkpoint import save_iou_head

    head = tmp_path / "head.safetensors"
    config = _tiny_recipe(person_folder, tmp_path, "tune.iou_head_only=true", "tune.iou_all_outputs=true",
                          "tune.steps=1", "validation.output_switch=true", "validation.output_switch_margin=0.0",
                          f'run.init_iou_head="{head}"')
    parent_sha = file_sha256(config.run.init_decoder)
    save_iou_head(build_tiny_sam_model(seed=5).decoder, head, parent_sha)
    cache = EmbeddingCache(config.run.embeddings, file_sha256(config.run.encoder))
    fill_cache(cache, images_to_encode(TrainingData(config.data)), TinyImageEncoder(TINY_CONFIG), log=lambda line: None)
    fit_sam_decoder(config, log=lambda line: None)
    output = Path(config.run.output_dir)
    start = load_sam_decoder(output / "step_0.safetensors").state_dict()
    given = build_tiny_sam_model(seed=5).decoder.state_dict()
    parent = load_sam_decoder(config.run.init_decoder).state_dict()
    assert all(torch.equal(start[k], given[k] if k.startswith("iou_head.") else parent[k]) for k in start)
    metadata = read_sam_metadata(output / "step_0.safetensors")
    assert metadata["init_iou_head_sha256"] == file_sha256(head) and metadata["parent_sha256"] == parent_sha
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "validation"] == [0, 1]

    other = save_iou_head(build_tiny_sam_model(seed=5).decoder, tmp_path / "other.safetensors", "f" * 64)
    refused = _tiny_recipe(person_folder, tmp_path, f'run.init_iou_head="{other}"')
    with pytest.raises(CheckpointError, match="IoU head of another decoder"):
        fit_sam_decoder(refused, log=lambda line: None)
