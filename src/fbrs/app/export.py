"""What the annotation app writes to disk, and reads back to resume.

Per annotation folder (``OUT``):

* ``OUT/masks/<image stem>.png``: instance-id map, (H, W) at the image's full resolution,
  0 = background, k = object id k; uint8, or uint16 once an id exceeds 255. Later objects are
  drawn on top of earlier ones where they overlap (the visible part is what a label map can hold).
* ``OUT/clicks/<image stem>.json``: the click log: every object's clicks in (x, y) pixel order, the
  settings they were made with, its label (category), the object's own full mask as COCO RLE (so
  deleting an object that covered another one restores the other exactly), and the unfinished
  object's clicks and label.
* COCO ``categories``: the project's labels, ids 1..N (default: the one label "object");
  each annotation's ``category_id`` is its object's label.
* ``OUT/coco_instances.json``: COCO instances for the whole folder, ``segmentation`` = compressed RLE
  (exact, pycocotools-compatible); ``OUT/coco_instances_polygons.json``: the same objects as COCO
  polygons (holes are lost; for tools such as CVAT that import polygons). Both hold the visible parts,
  so they agree with the PNG pixel for pixel (the polygon file up to the polygon approximation).

Everything here is pure NumPy + files; the app's sessions call it, the tests check it directly.
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.app.errors import AnnotationFileError
from fbrs.coco_rle import decode_rle, encode_rle  # noqa: F401 - part of this module's API
from fbrs.io_utils import save_png_atomic, write_text_atomic

CLICK_LOG_VERSION = 1
COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
MASKS_FOLDER = "masks"
CLICKS_FOLDER = "clicks"
COCO_RLE_FILE = "coco_instances.json"
COCO_POLYGON_FILE = "coco_instances_polygons.json"


# --------------------------------------------------------------------------------------------- colours


def object_color(object_id: int) -> tuple[int, int, int]:
    """Display colour (r, g, b) uint8 of an object id; stable, so the UI and exports agree."""
    # Golden-ratio hue steps keep consecutive ids far apart on the colour wheel.
    hue = (0.08 + 0.61803398875 * object_id) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def color_hex(object_id: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*object_color(object_id))


# ------------------------------------------------------------------------------------------- COCO RLE


# encode_rle / decode_rle live in fbrs.coco_rle (shared with the COCO dataset reader); re-exported here.


# ------------------------------------------------------------------------------------------- polygons


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a (H, W) bool mask, in continuous image
    coordinates (pixel (row i, column j) spans [j, j + 1) x [i, i + 1)).

    One polygon per 8-connected component, holes filled (COCO polygons cannot express holes; use RLE
    when they matter). Vertices are simplified with Douglas-Peucker at `tolerance` pixels.
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    polygons: list[list[float]] = []
    for component_index, component_slice in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[component_slice] == component_index
        component = ndimage.binary_fill_holes(component)
        # Pad so contours of components touching the border close.
        padded = np.pad(component, 1).astype(np.float32)
        for contour in find_contours(padded, 0.5, fully_connected="high"):
            contour = approximate_polygon(contour, tolerance=tolerance)
            if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
                contour = contour[:-1]  # COCO polygons are implicitly closed
            if len(contour) < 3:
                continue
            # -1 undoes the padding; +0.5 moves from pixel-index space (pixel i centred on i) to COCO's
            # continuous coordinates (pixel i spans [i, i + 1)), so the polygon hugs the pixel edges.
            rows = contour[:, 0] - 1 + component_slice[0].start + 0.5
            cols = contour[:, 1] - 1 + component_slice[1].start + 0.5
            rows = np.clip(rows, 0, mask.shape[0])
            cols = np.clip(cols, 0, mask.shape[1])
            polygons.append([round(float(value), 2) for pair in zip(cols, rows, strict=True) for value in pair])
    return polygons


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO bbox ``[x, y, width, height]`` of a (H, W) bool mask; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# ----------------------------------------------------------------------------------- instance-id maps


def instance_id_map(shape: tuple[int, int], objects: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """Label map (H, W) of ``(object_id, mask (H, W) bool)`` pairs; later pairs are drawn on top.

    dtype uint8 while every id fits, else uint16 (ids above 65535 raise ValueError).
    """
    objects = list(objects)
    largest = max((object_id for object_id, _ in objects), default=0)
    if largest > 65535:
        raise ValueError(f"object id {largest} does not fit a uint16 label map")
    dtype = np.uint8 if largest <= 255 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    for object_id, mask in objects:
        if mask.shape != tuple(shape):
            raise ValueError(f"object {object_id} mask has shape {mask.shape}, expected {tuple(shape)}")
        labels[mask] = object_id
    return labels


def visible_masks(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Object id -> (H, W) bool visible mask of a label map (background 0 excluded)."""
    return {int(object_id): labels == object_id for object_id in np.unique(labels) if object_id != 0}


def read_instance_png(path: str | os.PathLike) -> np.ndarray:
    """Read an instance-id PNG as a (H, W) uint8/uint16 array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except (OSError, UnidentifiedImageError) as error:
        raise AnnotationFileError(f"cannot read instance mask {path}: {error}") from None
    if labels.ndim != 2:
        raise AnnotationFileError(f"instance mask {path} must be single-channel, got shape {labels.shape}")
    return labels.astype(np.uint16) if labels.dtype != np.uint8 else labels


# ------------------------------------------------------------------------------------------ click log


@dataclass
class SavedObject:
    """One finished object as written to the click log. Clicks are dicts {"x", "y", "positive"}."""

    object_id: int
    mask: np.ndarray  # (H, W) bool, the object's own full mask (not cut by later objects)
    clicks: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = "object"  # the object's category (fbrs.app.labels)


@dataclass
class ImageAnnotation:
    """Everything saved about one image: what the click log holds and the PNG shows."""

    image_name: str
    width: int
    height: int
    objects: list[SavedObject] = field(default_factory=list)
    current_clicks: list[dict[str, Any]] = field(default_factory=list)
    current_settings: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    current_label: str | None = None  # the unfinished object's label (None: the project's first)

    def label_map(self) -> np.ndarray:
        return instance_id_map(
            (self.height, self.width), ((item.object_id, item.mask) for item in self.objects)
        )


def annotation_paths(out_dir: str | os.PathLike, image_name: str) -> tuple[Path, Path]:
    """(instance PNG path, click log path) of an image inside an annotation folder."""
    stem = Path(image_name).stem
    out_dir = Path(out_dir)
    return out_dir / MASKS_FOLDER / f"{stem}.png", out_dir / CLICKS_FOLDER / f"{stem}.json"


def click_log_to_json(annotation: ImageAnnotation) -> dict[str, Any]:
    return {
        "version": CLICK_LOG_VERSION,
        "coordinates": "x, y image pixels (column, row) at full resolution",
        "image": annotation.image_name,
        "width": annotation.width,
        "height": annotation.height,
        "done": annotation.done,
        "objects": [
            {
                "id": item.object_id,
                "label": item.label,
                "clicks": item.clicks,
                "settings": item.settings,
                "mask_rle": encode_rle(item.mask),
            }
            for item in annotation.objects
        ],
        "current_object": {"clicks": annotation.current_clicks, "settings": annotation.current_settings,
                           **({} if annotation.current_label is None else {"label": annotation.current_label})},
    }


def click_log_from_json(record: dict[str, Any], source: str = "click log") -> ImageAnnotation:
    try:
        if record.get("version") != CLICK_LOG_VERSION:
            raise ValueError(f"unsupported version {record.get('version')!r}, expected {CLICK_LOG_VERSION}")
        annotation = ImageAnnotation(
            image_name=str(record["image"]),
            width=int(record["width"]),
            height=int(record["height"]),
            done=bool(record.get("done", False)),
        )
        for item in record["objects"]:
            mask = decode_rle(item["mask_rle"])
            if mask.shape != (annotation.height, annotation.width):
                raise ValueError(f"object {item['id']} mask is {mask.shape}")
            annotation.objects.append(
                SavedObject(int(item["id"]), mask, list(item["clicks"]), dict(item.get("settings", {})),
                            _label(item.get("label", COCO_CATEGORY["name"])))
            )
        current = record.get("current_object", {})
        annotation.current_clicks = list(current.get("clicks", []))
        annotation.current_settings = dict(current.get("settings", {}))
        if current.get("label") is not None:
            annotation.current_label = _label(current["label"])
    except (KeyError, TypeError, ValueError) as error:
        raise AnnotationFileError(f"{source} is not a valid fbrs click log: {error}") from None
    return annotation


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"an object's label must be a non-empty string, got {value!r}")
    return value


def save_image_annotation(out_dir: str | os.PathLike, annotation: ImageAnnotation) -> tuple[Path, Path]:
    """Write the instance PNG (only when there are objects) and the click log, each atomically.

    Returns (png path, click log path). An image whose objects were all deleted loses its PNG.
    """
    png_path, log_path = annotation_paths(out_dir, annotation.image_name)
    if annotation.objects:
        save_png_atomic(png_path, annotation.label_map())
    elif png_path.exists():
        png_path.unlink()
    write_text_atomic(log_path, json.dumps(click_log_to_json(annotation), indent=1))
    return png_path, log_path


def load_image_annotation(out_dir: str | os.PathLike, image_name: str) -> ImageAnnotation | None:
    """Read an image's click log back (None when the image was never saved)."""
    _, log_path = annotation_paths(out_dir, image_name)
    if not log_path.is_file():
        return None
    try:
        record = json.loads(log_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AnnotationFileError(f"cannot read click log {log_path}: {error}") from None
    return click_log_from_json(record, source=str(log_path))


# ------------------------------------------------------------------------------------------------ COCO


def image_segments(labels: np.ndarray) -> list[dict[str, Any]]:
    """Per visible object of a label map (H, W): {"object_id", "rle", "polygons", "area", "bbox"}.

    Computed once per saved image and cached by the folder, so rewriting the folder's COCO files
    after each save does not re-trace every other image's polygons.
    """
    return [
        {
            "object_id": object_id,
            "rle": encode_rle(mask),
            "polygons": mask_to_polygons(mask),
            "area": int(mask.sum()),
            "bbox": mask_bbox(mask),
        }
        for object_id, mask in sorted(visible_masks(labels).items())
    ]


def annotation_segments(annotation: ImageAnnotation) -> list[dict[str, Any]]:
    """`image_segments` of an image's label map, each with its object's "label"."""
    if not annotation.objects:
        return []
    labels = {item.object_id: item.label for item in annotation.objects}
    segments = image_segments(annotation.label_map())
    for segment in segments:
        segment["label"] = labels[segment["object_id"]]
    return segments


def build_coco(
    images: Sequence[tuple[str, int, int, list[dict[str, Any]]]], polygons: bool,
    categories: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """COCO instances dict of ``(file name, width, height, image_segments(...))`` tuples; ids are
    1-based in the given order (unannotated images are listed too, so image ids stay stable).

    `categories`: [{"id", "name", ...}] (default: the one category "object"); a segment's "label"
    (default "object") picks its annotation's category_id by name."""
    categories = [dict(item) for item in categories] if categories else [dict(COCO_CATEGORY)]
    category_ids = {item["name"]: item["id"] for item in categories}
    coco: dict[str, Any] = {
        "info": {"description": "fbrs annotations", "version": "1.0"},
        "images": [],
        "annotations": [],
        "categories": categories,
    }
    for image_id, (file_name, width, height, segments) in enumerate(images, start=1):
        coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for segment in segments:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[segment.get("label", COCO_CATEGORY["name"])],
                    "segmentation": segment["polygons"] if polygons else segment["rle"],
                    "area": segment["area"],
                    "bbox": segment["bbox"],
                    "iscrowd": 0,
                    "fbrs_object_id": segment["object_id"],
                }
            )
    return coco


def write_coco_files(
    out_dir: str | os.PathLike, images: Sequence[tuple[str, int, int, list[dict[str, Any]]]],
    categories: Sequence[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write both COCO files atomically; returns (RLE file, polygon file)."""
    out_dir = Path(out_dir)
    rle_path, polygon_path = out_dir / COCO_RLE_FILE, out_dir / COCO_POLYGON_FILE
    write_text_atomic(rle_path, json.dumps(build_coco(images, polygons=False, categories=categories)))
    write_text_atomic(polygon_path, json.dumps(build_coco(images, polygons=True, categories=categories)))
    return rle_path, polygon_path
