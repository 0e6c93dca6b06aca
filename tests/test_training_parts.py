"""Training building blocks on real masks: config, losses, click sampling, augmentation, data, packing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from fbrs.errors import ConfigError, DatasetError
from fbrs.training.augment import augment_sample, crop_around_object
from fbrs.training.click_sampler import sample_clicks
from fbrs.training.config import AugmentConfig, ClickConfig, TrainConfig, load_config
from fbrs.training.data import (
    DatasetSource,
    FolderSource,
    PackSource,
    TrainingData,
    TrainingDataset,
    index_source,
    is_validation_image,
)
from fbrs.training.losses import binary_cross_entropy, normalized_focal_loss
from fbrs.training.pack import pack_training_data
from tests.conftest import copy_training_subset

REPO = Path(__file__).resolve().parents[1]
COCO_IMAGES = ("000000000009", "000000000025", "000000000030", "000000000250")  # 000000000250 has no objects


@pytest.fixture(scope="module")
def coco_folder(data_dir: Path, tmp_path_factory) -> Path:
    """A 4-image copy of the shared COCO training folder (one image with an empty mask)."""
    return copy_training_subset(data_dir, "coco_train2017", COCO_IMAGES, tmp_path_factory.mktemp("shared_copy"))


def _instances(folder: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "masks" / f"{stem}.png")).astype(np.int32)


# -- config -------------------------------------------------------------------------------------------
def test_bundled_configs_load_and_overrides_apply():
    paper = load_config(REPO / "configs" / "paper_r34.toml")
    assert paper.augment.crop_size == (320, 480)
    assert paper.optimizer.lr == 5e-4 and paper.optimizer.backbone_lr_multiplier == 0.1
    assert (paper.schedule.epochs, paper.schedule.drop_epoch) == (120, 100)
    assert paper.loss.name == "nfl"
    default = load_config(
        REPO / "configs" / "default_mnv2.toml",
        ["optimizer.lr=1e-4", "run.output_dir=elsewhere", "augment.crop_size=[128, 64]"],
    )
    assert default.optimizer.lr == 1e-4
    assert default.run.output_dir == "elsewhere"
    assert default.augment.crop_size == (128, 64)
    assert TrainConfig.from_dict(default.to_dict()) == default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lrr=1", "optimizer.lrr"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("augment.crop_size=[1, 2, 3]", "augment.crop_size"),
        ("loss.name=dice", "loss.name"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(REPO / "configs" / "default_mnv2.toml", [override])


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# -- losses -------------------------------------------------------------------------------------------
def _loss_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 16, 16, generator=generator) * 3
    targets = (torch.rand(2, 1, 16, 16, generator=generator) > 0.5).float()
    valid = torch.ones_like(targets)
    valid[:, :, :4] = 0
    return logits, targets, valid


def test_nfl_without_focusing_is_bce():
    logits, targets, valid = _loss_inputs()
    assert torch.allclose(
        normalized_focal_loss(logits, targets, valid, gamma=0.0), binary_cross_entropy(logits, targets, valid)
    )


def test_nfl_shifts_weight_to_hard_pixels_and_ignores_invalid_ones():
    logits, targets, valid = _loss_inputs()
    logits.requires_grad_(True)
    normalized_focal_loss(logits, targets, valid).backward()
    nfl_gradient = logits.grad.abs()
    logits.grad = None
    binary_cross_entropy(logits, targets, valid).backward()
    bce_gradient = logits.grad.abs()
    assert torch.all(nfl_gradient[valid == 0] == 0)
    probability_of_truth = torch.where(targets > 0.5, torch.sigmoid(logits), 1 - torch.sigmoid(logits)).detach()
    ratio = nfl_gradient / bce_gradient.clamp_min(1e-12)
    hard = (probability_of_truth < 0.2) & (valid > 0)
    easy = (probability_of_truth > 0.8) & (valid > 0)
    assert ratio[hard].mean() > 1.0 > ratio[easy].mean()
    # Changing logits where valid == 0 changes nothing.
    changed = logits.detach().clone()
    changed[valid == 0] = 50.0
    assert torch.allclose(
        normalized_focal_loss(changed, targets, valid), normalized_focal_loss(logits.detach(), targets, valid)
    )


# -- clicks -------------------------------------------------------------------------------------------
def test_clicks_respect_object_margins_spacing_and_ignore(coco_folder):
    instances = _instances(coco_folder, "000000000009")
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    target_id = int(ids[np.argmax(counts)])
    target = instances == target_id
    others = (instances > 0) & ~target
    ignore = np.zeros_like(target)
    ignore[:, : target.shape[1] // 4] = True
    config = ClickConfig()
    inside = ndimage.distance_transform_edt(target)
    outside = ndimage.distance_transform_edt(~target)
    seen_strategies = set()
    for seed in range(40):
        clicks = sample_clicks(target, others, ignore, config, np.random.default_rng(seed))
        seen_strategies.add(clicks.strategy)
        assert 1 <= len(clicks.positives) <= config.max_positive
        assert len(clicks.negatives) <= config.max_negative
        for group, spacing in (
            (clicks.positives, config.positive_spacing),
            (clicks.negatives, config.negative_spacing),
        ):
            if len(group) > 1:
                distances = np.sqrt(((group[:, None] - group[None]) ** 2).sum(-1))
                assert distances[~np.eye(len(group), dtype=bool)].min() >= spacing
        for y, x in clicks.positives.astype(int):
            assert target[y, x] and inside[y, x] > config.positive_margin and not ignore[y, x]
        for y, x in clicks.negatives.astype(int):
            assert not target[y, x] and outside[y, x] > config.negative_margin and not ignore[y, x]
            if clicks.strategy == "other_objects":
                assert others[y, x]
            elif clicks.strategy == "background_band":
                assert outside[y, x] <= config.negative_band
            elif clicks.strategy == "far_background":
                assert outside[y, x] > config.negative_band
        points = clicks.as_points(config.max_positive, config.max_negative)
        assert points.shape == (20, 2)
        assert np.all(points[len(clicks.positives) : 10] == -1)
    assert {"background_band", "far_background", "other_objects"} <= seen_strategies


def _whole_crop_distance(values, box, margin, fill):
    """The plain whole-crop transform that `_distance_to_zero_in_box` replaces (background distances capped
    at `fill`, which the sampler's thresholds cannot tell apart from anything larger)."""
    distances = ndimage.distance_transform_edt(values)
    return np.minimum(distances, fill) if fill > 0 else distances


@pytest.mark.parametrize("shape_kind", ["blob", "touches_borders", "thin_line", "fills_crop", "two_parts"])
def test_windowed_distance_transforms_sample_the_same_clicks_as_whole_crop_ones(shape_kind, monkeypatch):
    import fbrs.training.click_sampler as click_sampler

    height, width = 96, 128
    yy, xx = np.mgrid[:height, :width]
    target = {
        "blob": (yy - 40) ** 2 / 400 + (xx - 70) ** 2 / 900 < 1,
        "touches_borders": (yy < 30) | (xx > 110),
        "thin_line": (np.abs(yy - xx // 2) <= 1) & (xx > 10),
        "fills_crop": np.ones((height, width), bool),
        "two_parts": ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 80) ** 2 + (xx - 110) ** 2 < 150),
    }[shape_kind]
    others = ((yy - 70) ** 2 + (xx - 30) ** 2 < 120) & ~target
    ignore = np.zeros_like(target)
    ignore[:, :6] = True
    config = ClickConfig(negative_band=20)
    windowed = [sample_clicks(target, others, ignore, config, np.random.default_rng(seed)) for seed in range(12)]
    monkeypatch.setattr(click_sampler, "_distance_to_zero_in_box", _whole_crop_distance)
    whole = [sample_clicks(target, others, ignore, config, np.random.default_rng(seed)) for seed in range(12)]
    for a, b in zip(windowed, whole, strict=True):
        assert a.strategy == b.strategy
        np.testing.assert_array_equal(a.positives, b.positives)
        np.testing.assert_array_equal(a.negatives, b.negatives)


def test_clicks_on_an_empty_object_are_refused():
    with pytest.raises(ValueError, match="empty"):
        sample_clicks(np.zeros((8, 8), bool), None, None, ClickConfig(), np.random.default_rng(0))


# -- augmentation -------------------------------------------------------------------------------------
def test_crop_contains_the_object_and_pads_small_images_as_ignored(coco_folder):
    instances = _instances(coco_folder, "000000000025")
    image = np.asarray(Image.open(coco_folder / "images" / "000000000025.jpg").convert("RGB"))
    ignore = np.zeros(instances.shape, bool)
    height, width = instances.shape
    for seed in range(10):
        object_id = int(np.unique(instances[instances > 0])[seed % len(np.unique(instances[instances > 0]))])
        crop = crop_around_object(image, instances, ignore, object_id, (height + 10, 100), np.random.default_rng(seed))
        assert crop.image.shape == (height + 10, 100, 3)
        assert (crop.instances == object_id).any()
        assert crop.ignore[height:].all() and not crop.ignore[:height].any()
        # The crop is a true window of the image: find it and compare pixels.
        rows = crop.image[:height]
        matches = [left for left in range(width - 99) if np.array_equal(image[:, left : left + 100], rows)]
        assert matches and np.array_equal(instances[:, matches[0] : matches[0] + 100], crop.instances[:height])


def test_augmentation_keeps_image_and_masks_aligned(coco_folder):
    instances = _instances(coco_folder, "000000000030")
    # Paint the object ids into the image so that misalignment would show as a colour mismatch.
    image = np.stack([(instances * 40 % 256).astype(np.uint8)] * 3, axis=2)
    ignore = instances == 0
    config = AugmentConfig(crop_size=(96, 128), scale_range=(1.0, 1.0), color_jitter=0.0)
    for seed in range(6):
        object_id = int(np.unique(instances[instances > 0])[0])
        crop = augment_sample(image, instances, ignore, object_id, config, np.random.default_rng(seed))
        assert crop.image.shape == (96, 128, 3) and crop.instances.shape == (96, 128)
        inside = crop.instances > 0
        assert np.array_equal(crop.image[..., 0][inside], (crop.instances[inside] * 40 % 256).astype(np.uint8))
        assert np.array_equal(crop.ignore & ~(crop.instances == 0), np.zeros_like(crop.ignore))


# -- data ---------------------------------------------------------------------------------------------
def test_folder_index_skips_empty_masks_and_small_objects(coco_folder):
    source = FolderSource(coco_folder)
    records = index_source(source, min_object_area=0, max_side=0)
    assert "000000000250" not in {record.name for record in records}
    assert {record.name for record in records} == set(COCO_IMAGES[:3])
    large = index_source(source, min_object_area=5000, max_side=0)
    for record in large:
        instances = _instances(coco_folder, record.name)
        for object_id, area in zip(record.object_ids, record.object_areas, strict=True):
            assert area == (instances == object_id).sum() >= 5000
    assert sum(len(r.object_ids) for r in large) < sum(len(r.object_ids) for r in records)


def test_missing_folder_layout_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="masks/"):
        (tmp_path / "images").mkdir()
        FolderSource(tmp_path)


def test_validation_split_is_stable_and_disjoint(coco_folder):
    held_out = [is_validation_image(f"set/{i}", 0.2) for i in range(2000)]
    assert held_out == [is_validation_image(f"set/{i}", 0.2) for i in range(2000)]
    assert 0.15 < np.mean(held_out) < 0.25
    config = load_config(
        REPO / "configs" / "tiny_test.toml",
        [
            f'data.sources=[{{path="{coco_folder}"}}]',
            "data.validation_fraction=0.5",
            "data.max_side=0",
            "data.validation_max_objects=100",
        ],
    )
    data = TrainingData(config.data)
    training = {record.source for records in data.train_records for record in records}
    validation = {record.source for _, record in data.validation_records}
    assert training | validation == {f"coco_train2017/{stem}" for stem in COCO_IMAGES[:3]}
    assert not training & validation
    assert validation == {key for key in training | validation if is_validation_image(key, 0.5)}
    all_objects = data.validation_objects(max_side=0)
    large_objects = data.validation_objects(max_side=0, min_area=5000)
    assert all(item.gt.sum() >= 5000 for item in large_objects)
    assert 0 < len(large_objects) < len(all_objects)
    with pytest.raises(DatasetError, match="outside the validation split"):
        TrainingData(dataclasses.replace(config.data, validation_fraction=1.0))


def test_dataset_samples_are_reproducible_and_well_formed(coco_folder):
    config = load_config(
        REPO / "configs" / "tiny_test.toml",
        [f'data.sources=[{{path="{coco_folder}"}}]', "data.validation_fraction=0.0"],
    )
    data = TrainingData(config.data)
    dataset = TrainingDataset(data, config, seed=3)
    first, again = dataset[1], dataset[1]
    for key in first:
        assert torch.equal(first[key], again[key])
    assert first["image"].shape == (3, 64, 64) and first["mask"].shape == (1, 64, 64)
    assert first["points"].shape == (8, 2)
    assert first["mask"].sum() > 0
    positives = first["points"][:4]
    positives = positives[positives[:, 0] >= 0].long()
    assert len(positives) >= 1 and torch.all(first["mask"][0, positives[:, 0], positives[:, 1]] == 1)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["image"], first["image"])


def test_pack_round_trip_keeps_masks_and_split(coco_folder, tmp_path):
    summary = pack_training_data([coco_folder], tmp_path / "train.zip", max_side=200, progress=False)
    assert summary.images == 3 and summary.path.stat().st_size == summary.bytes
    pack = PackSource(summary.path)
    folder = FolderSource(coco_folder)
    for name in folder.names():
        if name == "000000000250":
            continue
        image, mask, _ = pack.read(f"{coco_folder.name}/{name}")
        assert max(image.shape[:2]) == 200 and image.shape[:2] == mask.shape
        assert set(np.unique(mask)) <= set(np.unique(_instances(coco_folder, name)))
    keys_pack = {r.source for r in index_source(pack, 0, 0)}
    keys_folder = {r.source for r in index_source(folder, 0, 0)}
    assert keys_pack == keys_folder  # the same names, so the same held-out split
    with pytest.raises(DatasetError, match="over the limit"):
        pack_training_data([coco_folder], tmp_path / "big.zip", max_side=200, max_bytes=1000, progress=False)
    assert not (tmp_path / "big.zip").exists()


def test_dataset_kind_reads_through_the_evaluation_loaders(data_dir, tmp_path):
    source_folder = data_dir / "train" / "ccp_person"
    folder = tmp_path / "ccp_person"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for stem in ("0001", "0003"):
        shutil.copy(source_folder / "images" / f"{stem}.jpg", folder / "images")
        shutil.copy(source_folder / "masks" / f"{stem}.png", folder / "masks")
    through_loader = DatasetSource(str(folder), split="train")
    direct = FolderSource(folder)
    loader_records = index_source(through_loader, 0, 0)
    direct_records = index_source(direct, 0, 0)
    assert [r.object_areas for r in loader_records] == [r.object_areas for r in direct_records]
    assert {r.source for r in loader_records} == {r.source for r in direct_records}


def test_persistent_loader_workers_follow_the_epoch(coco_folder):
    """The trainer keeps one DataLoader with persistent workers: the epoch reaches them through the
    sampler's (epoch, position) keys, so epoch 1 draws new crops, exactly those of in-process sampling."""
    from fbrs.training.data import EpochPositions

    config = load_config(
        REPO / "configs" / "tiny_test.toml",
        [f'data.sources=[{{path="{coco_folder}"}}]', "data.validation_fraction=0.0", "data.samples_per_epoch=6"],
    )
    dataset = TrainingDataset(TrainingData(config.data), config, seed=3)
    sampler = EpochPositions(len(dataset))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, persistent_workers=True)
    images = {}
    for epoch, start in ((0, 0), (1, 3)):
        sampler.start_epoch(epoch, start)
        images[epoch] = torch.cat([batch["image"] for batch in loader])
        expected = torch.stack([dataset[(epoch, position)]["image"] for position in range(start, 6)])
        assert torch.equal(images[epoch], expected)
    assert images[1].shape[0] == 3  # a resumed epoch starts at its saved position
    assert not torch.equal(images[1], images[0][3:])


# -- iterative click sampling ---------------------------------------------------------------------------
def _points(positives=(), negatives=(), per_kind=3):
    points = torch.full((1, 2 * per_kind, 2), -1.0)
    for row, point in enumerate(positives):
        points[0, row] = torch.tensor(point, dtype=torch.float32)
    for row, point in enumerate(negatives):
        points[0, per_kind + row] = torch.tensor(point, dtype=torch.float32)
    return points


def test_region_depth_is_the_distance_to_the_region_border():
    from fbrs.training.iterative import region_depth

    region = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    region[0, 0, 1:8, 1:8] = True  # a 7x7 square: depth 4 at its centre, 1 on its rim
    depth = region_depth(region, max_depth=10)[0, 0]
    assert depth[4, 4] == 4 and depth[1, 1] == 1 and depth[0, 0] == 0 and depth[2, 4] == 2
    border = torch.ones(1, 1, 5, 5, dtype=torch.bool)  # outside the image counts as outside the region
    assert region_depth(border, max_depth=10)[0, 0, 0, 2] == 1
    assert region_depth(region, max_depth=2)[0, 0].max() == 2


def test_error_click_goes_to_the_deepest_missed_part_as_a_positive():
    from fbrs.training.iterative import add_error_clicks

    masks = torch.zeros(1, 1, 64, 64)
    masks[0, 0, 8:40, 8:40] = 1.0  # object: a 32x32 square, centre (23.5, 23.5)
    probs = torch.zeros(1, 1, 64, 64)  # nothing predicted
    valid = torch.ones_like(masks)
    result = add_error_clicks(probs, masks, valid, _points(positives=[(50, 50)]))
    y, x = result[0, 1].tolist()
    assert abs(y - 23.5) <= 4 and abs(x - 23.5) <= 4  # the second positive row, near the centre
    assert result[0, 0].tolist() == [50.0, 50.0] and torch.all(result[0, 2:] == -1)


def test_error_click_is_negative_on_a_larger_false_positive_and_respects_free_rows():
    from fbrs.training.iterative import add_error_clicks

    masks = torch.zeros(1, 1, 64, 64)
    masks[0, 0, 8:20, 8:20] = 1.0
    probs = masks.clone()
    probs[0, 0, 30:62, 30:62] = 0.9  # a big false positive; the object itself is right
    valid = torch.ones_like(masks)
    result = add_error_clicks(probs, masks, valid, _points(positives=[(12, 12)]))
    y, x = result[0, 3].tolist()  # first negative row
    assert 30 <= y < 62 and 30 <= x < 62 and torch.all(result[0, 1:3] == -1)
    full = _points(positives=[(12, 12)], negatives=[(1, 1), (2, 2), (3, 3)])
    assert torch.equal(add_error_clicks(probs, masks, valid, full), full)  # no free negative row: unchanged
    assert torch.equal(add_error_clicks(masks.clone(), masks, valid, full), full)  # no error: unchanged
    ignored = valid.clone()
    ignored[0, 0, 30:62, 30:62] = 0.0  # errors on ignored pixels do not count
    assert torch.equal(add_error_clicks(probs, masks, ignored, full), full)
