"""Dataset loaders: the shared evaluation sets and every other supported layout (built in tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fbrs.coco_rle import decode_counts
from fbrs.errors import DatasetError
from fbrs.evaluation.datasets import load_dataset

# --------------------------------------------------------------------------------------------------------
# The shared evaluation sets (README of /work/shared/data gives the counts and encodings checked here)


def test_grabcut_shared_layout(data_dir):
    dataset = load_dataset(data_dir / "GrabCut")
    assert dataset.name == "GrabCut" and len(dataset) == 50
    names = dataset.sample_names()
    with_ignore = [dataset[i].ignore.any() for i in range(len(dataset))]
    assert sum(with_ignore) == 42
    assert not with_ignore[names.index("teddy")]
    sample = dataset[names.index("music")]  # upper-case .JPG image
    image, mask, ignore = sample
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert mask.shape == ignore.shape == image.shape[:2]
    assert mask.any() and not (mask & ignore).any()


def test_berkeley_pairs_suffixed_masks_with_their_image(data_dir):
    dataset = load_dataset("Berkeley", root=data_dir)
    assert len(dataset) == 100
    names = dataset.sample_names()
    union, part_a, part_b = (dataset[names.index(n)] for n in ("189011", "189011a", "189011b"))
    assert dataset.image_path(names.index("189011a")).name == "189011.jpg"
    np.testing.assert_array_equal(union.image, part_a.image)
    np.testing.assert_array_equal(union.mask, part_a.mask | part_b.mask)
    assert not union.ignore.any()


def test_davis_counts_every_nonzero_palette_index_as_object(data_dir):
    dataset = load_dataset("davis", root=data_dir)
    assert dataset.name == "DAVIS" and len(dataset) == 345
    sample = dataset[dataset.sample_names().index("195")]  # has palette indices 1, 2 and 255
    raw = np.asarray(Image.open(data_dir / "DAVIS" / "masks" / "195.png"))
    np.testing.assert_array_equal(sample.mask, raw != 0)
    assert sample.image.shape == (480, 854, 3)


def test_standard_name_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match=r"GrabCut not found.*FBRS_DATA"):
        load_dataset("GrabCut", root=tmp_path)


# --------------------------------------------------------------------------------------------------------
# Original distributions and other formats, generated


def _save(path, array, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def _image(height=12, width=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_grabcut_original_layout_decodes_ignore_band(tmp_path):
    root = tmp_path / "GrabCut"
    _save(root / "data_GT" / "cat.jpg", _image())
    mask = np.zeros((12, 16), np.uint8)
    mask[3:9, 4:12] = 255
    mask[3, 4:12] = 128
    _save(root / "boundary_GT" / "cat.bmp", mask)
    dataset = load_dataset(root)
    assert dataset.mask_encoding == "threshold128"
    sample = dataset[0]
    np.testing.assert_array_equal(sample.mask, mask == 255)
    np.testing.assert_array_equal(sample.ignore, mask == 128)
    np.testing.assert_array_equal(sample.gt_labels()[3, 4:12], -1)


def test_davis_original_layout_reads_palette_as_colours(tmp_path):
    root = tmp_path / "COCO_MVal"
    _save(root / "img" / "0001.jpg", _image())
    indices = np.zeros((12, 16), np.uint8)
    indices[2:5, 2:5] = 1
    indices[6:9, 6:9] = 3
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)
    _save(root / "gt" / "0001.png", indices, mode="P", palette=palette)
    sample = load_dataset(root)[0]
    np.testing.assert_array_equal(sample.mask, indices != 0)


def test_sbd_gives_one_sample_per_instance(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "SBD"
    labels = np.zeros((12, 16), np.uint8)
    labels[1:4, 1:4] = 1
    labels[6:10, 8:14] = 2
    _save(root / "img" / "2008_000001.jpg", _image())
    (root / "inst").mkdir()
    savemat(root / "inst" / "2008_000001.mat", {"GTinst": {"Segmentation": labels, "Categories": [[15], [7]]}})
    (root / "val.txt").write_text("2008_000001\n")
    dataset = load_dataset(root)
    assert dataset.sample_names() == ["2008_000001#1", "2008_000001#2"]
    np.testing.assert_array_equal(dataset[1].mask, labels == 2)
    assert not dataset[1].ignore.any()


def test_pascal_voc_instances_with_void_as_ignore(tmp_path):
    root = tmp_path / "VOC2012"
    labels = np.zeros((12, 16), np.uint8)
    labels[1:5, 1:5] = 1
    labels[6:11, 6:15] = 2
    labels[5, :] = 255
    _save(root / "JPEGImages" / "2007_000032.jpg", _image())
    palette = [value % 256 for value in range(256 * 3)]
    _save(root / "SegmentationObject" / "2007_000032.png", labels, mode="P", palette=palette)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    dataset = load_dataset(root)
    assert len(dataset) == 2
    second = dataset[1]
    np.testing.assert_array_equal(second.mask, labels == 2)
    np.testing.assert_array_equal(second.ignore, labels == 255)


def test_generic_folder_with_instance_ids_and_ignore_folder(tmp_path):
    root = tmp_path / "mine"
    labels = np.zeros((12, 16), np.uint8)
    labels[0:5, 0:5] = 1
    labels[7:12, 7:12] = 2
    crowd = np.zeros((12, 16), np.uint8)
    crowd[0:12, 14:16] = 255
    _save(root / "images" / "a.png", _image())
    _save(root / "masks" / "a.png", labels)
    _save(root / "ignore" / "a.png", crowd)
    dataset = load_dataset(root, mask_encoding="instances")
    assert dataset.sample_names() == ["a#1", "a#2"]
    np.testing.assert_array_equal(dataset[0].ignore, crowd > 0)
    binary = load_dataset(root)  # default: any non-zero value is the object
    assert binary.sample_names() == ["a"]
    np.testing.assert_array_equal(binary[0].mask, labels > 0)


def _encode_rle_string(counts):
    """COCO's compressed RLE writer, written from the format description (inverse of the decoder)."""
    text = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = not ((value == 0 and not chunk & 0x10) or (value == -1 and chunk & 0x10))
            if more:
                chunk |= 0x20
            text.append(chr(chunk + 48))
    return "".join(text)


def test_coco_json_polygons_rle_and_crowd_ignore(tmp_path):
    height, width = 12, 16
    _save(tmp_path / "images" / "000001.jpg", _image(height, width))
    rle_mask = np.zeros((height, width), bool)
    rle_mask[6:10, 2:7] = True
    flat = rle_mask.T.ravel()  # COCO RLE runs are column-major
    change = np.flatnonzero(np.diff(flat.astype(int))) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    crowd = np.zeros((height, width), bool)
    crowd[0:3, 12:16] = True
    crowd_counts = np.diff(
        np.concatenate([[0], np.flatnonzero(np.diff(crowd.T.ravel().astype(int))) + 1, [crowd.size]])
    ).tolist()
    content = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": height, "width": width}],
        "annotations": [
            {"id": 10, "image_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 9, 1, 9, 4, 1, 4]]},
            {"id": 11, "image_id": 1, "iscrowd": 0, "segmentation": {"size": [height, width], "counts": counts}},
            {
                "id": 12,
                "image_id": 1,
                "iscrowd": 1,
                "segmentation": {"size": [height, width], "counts": _encode_rle_string(crowd_counts)},
            },
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(content))
    dataset = load_dataset(tmp_path / "instances.json")
    assert dataset.sample_names() == ["000001#10", "000001#11"]
    polygon = dataset[0].mask
    assert polygon[2, 2:9].all() and not polygon[6:, :].any() and not polygon[:, 11:].any()
    np.testing.assert_array_equal(dataset[1].mask, rle_mask)
    np.testing.assert_array_equal(dataset[1].ignore, crowd)


def test_rle_string_decoder_handles_large_and_decreasing_runs():
    counts = [0, 5000, 3, 70000, 12, 1, 90000]
    assert decode_counts(_encode_rle_string(counts)) == counts


# --------------------------------------------------------------------------------------------------------
# Errors name the path and what was expected


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_unknown_layout_lists_the_expected_ones(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match="no known dataset layout: expected images/ \\+ masks/"):
        load_dataset(tmp_path / "stuff")


def test_mask_without_image_names_both(tmp_path):
    _save(tmp_path / "d" / "masks" / "lonely.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(DatasetError, match=r"lonely\.png has no image: expected .*images/lonely"):
        load_dataset(tmp_path / "d")


def test_size_mismatch_names_mask_and_image(tmp_path):
    _save(tmp_path / "d" / "images" / "x.png", _image(12, 16))
    _save(tmp_path / "d" / "masks" / "x.png", np.zeros((10, 16), np.uint8))
    dataset = load_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match=r"x\.png has size 16x10 .* has 16x12"):
        dataset[0]


def test_malformed_pairs_tsv_line_and_corrupt_mask(tmp_path):
    root = tmp_path / "d"
    _save(root / "images" / "x.png", _image())
    (root / "masks").mkdir()
    (root / "masks" / "x.png").write_bytes(b"not a png")
    (root / "pairs.tsv").write_text("image\tmask\nimages/x.png masks/x.png\n")
    with pytest.raises(DatasetError, match=r"pairs\.tsv:2: expected 'image<TAB>mask'"):
        load_dataset(root)
    (root / "pairs.tsv").write_text("image\tmask\nimages/x.png\tmasks/x.png\n")
    with pytest.raises(DatasetError, match=r"cannot read mask .*x\.png"):
        load_dataset(root)[0]


def test_sbd_missing_split_list(tmp_path):
    (tmp_path / "SBD" / "img").mkdir(parents=True)
    (tmp_path / "SBD" / "inst").mkdir()
    with pytest.raises(DatasetError, match=r"split list not found: .*val\.txt"):
        load_dataset(tmp_path / "SBD")
