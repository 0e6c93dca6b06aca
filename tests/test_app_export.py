"""What the annotation app writes: COCO RLE, polygons, instance-id PNGs, click logs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw

from fbrs.app.errors import AnnotationFileError
from fbrs.app.export import (
    ImageAnnotation,
    SavedObject,
    annotation_paths,
    build_coco,
    decode_rle,
    encode_rle,
    image_segments,
    instance_id_map,
    load_image_annotation,
    mask_bbox,
    mask_to_polygons,
    read_instance_png,
    save_image_annotation,
)


def reference_runs(mask: np.ndarray) -> list[int]:
    """Run lengths the slow obvious way: walk the column-major pixels, count, start with background."""
    runs, current, length = [], False, 0
    for value in mask.ravel(order="F"):
        if bool(value) != current:
            runs.append(length)
            current, length = bool(value), 0
        length += 1
    runs.append(length)
    return runs


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_round_trip_and_runs_match_a_direct_count(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape)
    assert all(48 <= ord(character) < 48 + 64 for character in rle["counts"])
    np.testing.assert_array_equal(decode_rle(rle), mask)
    uncompressed = {"size": list(mask.shape), "counts": reference_runs(mask)}
    np.testing.assert_array_equal(decode_rle(uncompressed), mask)


def test_rle_string_follows_the_coco_scheme():
    # 2x2 mask [[0, 1], [1, 1]]: column-major pixels 0,1,1,1 -> runs [1, 3] -> '1' (=48+1), '3'.
    assert encode_rle(np.array([[0, 1], [1, 1]], dtype=bool))["counts"] == "13"
    # runs [5, 2, 3, 1]: from the fourth run on, runs are stored as the difference to the run two
    # before: 1 - 2 = -1 -> 5-bit group 0b11111 (sign bit 0x10 set, nothing follows) -> chr(48 + 31).
    mask = np.zeros((11, 1), dtype=bool)
    mask[5:7] = True
    mask[10] = True
    assert encode_rle(mask)["counts"] == "523O"
    # a run of 40 needs two groups: 40 = 8 + 1 * 32 -> (8 | 0x20) + 48 = 'X', then 1 + 48 = '1'.
    mask = np.zeros((41, 1), dtype=bool)
    mask[40] = True
    assert encode_rle(mask)["counts"] == "X11"


def test_malformed_rle_is_rejected():
    with pytest.raises(ValueError, match="cover"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="size"):
        decode_rle({"counts": "13"})


def draw_polygons(polygons: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]))
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        # COCO coordinates: pixel j spans [j, j + 1); PIL fills pixels whose centre (j + 0.5) is inside.
        draw.polygon([value - 0.5 for value in polygon], fill=1)
    return np.asarray(canvas).astype(bool)


def test_polygons_trace_each_component_and_fill_holes():
    rows, cols = np.mgrid[:80, :120]
    ring = ((rows - 40) ** 2 + (cols - 35) ** 2 < 25**2) & ((rows - 40) ** 2 + (cols - 35) ** 2 >= 8**2)
    square = (rows >= 10) & (rows < 30) & (cols >= 80) & (cols < 110)
    mask = ring | square
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in polygons)
    filled = draw_polygons(polygons, mask.shape)
    hole = (rows - 40) ** 2 + (cols - 35) ** 2 < 8**2
    expected = mask | hole
    iou = (filled & expected).sum() / (filled | expected).sum()
    assert iou > 0.95
    # The square's polygon hugs its pixel edges: x from 80 to 110, y from 10 to 30.
    square_polygon = next(polygon for polygon in polygons if min(polygon[0::2]) > 60)
    assert min(square_polygon[0::2]) == pytest.approx(80, abs=0.6)
    assert max(square_polygon[0::2]) == pytest.approx(110, abs=0.6)
    assert min(square_polygon[1::2]) == pytest.approx(10, abs=0.6)
    assert max(square_polygon[1::2]) == pytest.approx(30, abs=0.6)


def test_bbox_is_x_y_width_height():
    mask = np.zeros((50, 60), dtype=bool)
    mask[5:15, 20:50] = True
    assert mask_bbox(mask) == [20, 5, 30, 10]
    assert mask_bbox(np.zeros((3, 3), dtype=bool)) == [0, 0, 0, 0]


def test_instance_map_draws_later_objects_on_top_and_widens_to_uint16():
    first = np.zeros((4, 6), dtype=bool)
    first[:, :4] = True
    second = np.zeros((4, 6), dtype=bool)
    second[:, 3:] = True
    labels = instance_id_map((4, 6), [(1, first), (2, second)])
    assert labels.dtype == np.uint8
    assert labels[0].tolist() == [1, 1, 1, 2, 2, 2]
    wide = instance_id_map((4, 6), [(300, first)])
    assert wide.dtype == np.uint16 and wide.max() == 300


def test_saved_annotation_round_trips_through_png_and_click_log(tmp_path):
    height, width = 30, 40
    masks = []
    for object_id in range(1, 258):  # 257 objects: ids above 255 need a uint16 PNG
        mask = np.zeros((height, width), dtype=bool)
        mask.flat[(object_id * 7) % (height * width)] = True
        masks.append(mask)
    big = np.zeros((height, width), dtype=bool)
    big[2:20, 3:30] = True
    objects = [SavedObject(1, big, [{"x": 10.0, "y": 5.0, "positive": True}], {"mode": "NoBRS"})]
    objects += [SavedObject(object_id, mask, [], {}) for object_id, mask in enumerate(masks[1:], start=2)]
    annotation = ImageAnnotation("cat.jpg", width, height, objects,
                                 current_clicks=[{"x": 1.0, "y": 2.0, "positive": False}], done=True)
    png_path, log_path = save_image_annotation(tmp_path, annotation)
    assert (png_path, log_path) == annotation_paths(tmp_path, "cat.jpg")
    labels = read_instance_png(png_path)
    assert labels.dtype == np.uint16 and labels.shape == (height, width)
    np.testing.assert_array_equal(labels, annotation.label_map())
    assert not list(tmp_path.rglob("*.tmp"))

    restored = load_image_annotation(tmp_path, "cat.jpg")
    assert restored.done and restored.current_clicks == [{"x": 1.0, "y": 2.0, "positive": False}]
    assert [item.object_id for item in restored.objects] == [item.object_id for item in objects]
    # The click log keeps each object's own full mask, also where later objects cover it.
    np.testing.assert_array_equal(restored.objects[0].mask, big)
    assert restored.objects[0].clicks == [{"x": 10.0, "y": 5.0, "positive": True}]

    log_path.write_text(json.dumps({"version": 1, "image": "cat.jpg"}))
    with pytest.raises(AnnotationFileError, match="cat.json"):
        load_image_annotation(tmp_path, "cat.jpg")


def test_coco_annotations_hold_the_visible_parts():
    first = np.zeros((20, 20), dtype=bool)
    first[2:12, 2:12] = True
    second = np.zeros((20, 20), dtype=bool)
    second[8:18, 8:18] = True
    labels = instance_id_map((20, 20), [(1, first), (2, second)])
    coco = build_coco([("a.jpg", 20, 20, image_segments(labels)), ("b.jpg", 20, 20, [])], polygons=False)
    assert [image["id"] for image in coco["images"]] == [1, 2]
    assert len(coco["annotations"]) == 2
    by_object = {entry["fbrs_object_id"]: entry for entry in coco["annotations"]}
    np.testing.assert_array_equal(decode_rle(by_object[1]["segmentation"]), first & ~second)
    assert by_object[1]["area"] == 100 - 16 and by_object[2]["area"] == 100
    assert by_object[2]["bbox"] == [8, 8, 10, 10]
    polygons = build_coco([("a.jpg", 20, 20, image_segments(labels))], polygons=True)
    assert all(isinstance(entry["segmentation"], list) for entry in polygons["annotations"])
