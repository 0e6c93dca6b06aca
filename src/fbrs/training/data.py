"""Training data: folder and packed sources, the object index, the held-out split and the torch Dataset.

Folder layout (as ../shared/data/train/<set>): `images/<stem>.<ext>`, `masks/<stem>.png` (single channel;
0 = background, every other value is one object: instance ids 1..N, or 255 for a binary set), optional
`ignore/<stem>.png` (non-zero = excluded from loss and clicks), optional `parts/<stem>.png` (a label map of
object parts: ccp_person's garments, read with the source option `parts = true`). A pack is one zip file written by
`fbrs pack-data` with the same content, downscaled, and an `index.json` listing every object's area.

A training sample is one object of one image: an image crop (3, h, w) float32 ImageNet-normalised,
points (2N, 2) float32 (y, x) with positives first and (-1, -1) padding, the object mask and the
validity mask (1, h, w) float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from fbrs.errors import DatasetError
from fbrs.images import IMAGENET_MEAN, IMAGENET_STD, as_rgb_uint8, read_image
from fbrs.training.augment import Crop, augment_sample, paste_object
from fbrs.training.click_sampler import sample_clicks
from fbrs.training.config import DataConfig, DataSource, TrainConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PACK_FORMAT = "fbrs-train-pack-1"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source and the objects of it that are large enough to train on.

    object_ids: instance values in the mask; object_areas: their pixel counts at the stored resolution."""

    source: str  # "<set>/<stem>": the same for a folder and for its pack, so the split is the same
    name: str  # the name the source reads it by
    object_ids: tuple[int, ...]
    object_areas: tuple[int, ...]


def _decode_mask(data: bytes | Path, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as pil:
            array = np.asarray(pil)
    except OSError as error:
        raise DatasetError(f"cannot read mask {what}: {error}") from None
    if array.ndim == 3:
        array = array[:, :, 0]
    return array


def _downscale(
    image: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None, max_side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    height, width = mask.shape
    if max_side <= 0 or max(height, width) <= max_side:
        return image, mask, ignore
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    if ignore is not None:
        ignore = np.asarray(Image.fromarray(ignore).resize(size, Image.NEAREST))
    return image, mask, ignore


class FolderSource:
    """A training set on disk in the images/ + masks/ [+ ignore/] layout."""

    def __init__(self, root: str | os.PathLike, name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        for folder in ("images", "masks"):
            if not (self.root / folder).is_dir():
                raise DatasetError(f"training set {self.root} has no {folder}/ folder (expected images/, masks/)")
        self._images: dict[str, Path] = {}
        for path in sorted((self.root / "images").iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and (self.root / "masks" / f"{path.stem}.png").is_file():
                self._images[path.stem] = path
        if not self._images:
            raise DatasetError(f"training set {self.root}: no image in images/ has a mask masks/<stem>.png")

    def names(self) -> list[str]:
        return list(self._images)

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """image (H, W, 3) uint8, mask (H, W) integer instance map, ignore (H, W) uint8 or None."""
        image = read_image(self._images[name])
        mask = _decode_mask(self.root / "masks" / f"{name}.png", str(self.root / "masks" / f"{name}.png"))
        ignore_path = self.root / "ignore" / f"{name}.png"
        ignore = _decode_mask(ignore_path, str(ignore_path)) if ignore_path.is_file() else None
        for what, array in (("mask", mask), ("ignore mask", ignore)):
            if array is not None and array.shape != image.shape[:2]:
                raise DatasetError(
                    f"{what} of {self._images[name]} has size {array.shape}, image has {image.shape[:2]}"
                )
        return image, mask, ignore

    def stored_areas(self, name: str) -> dict[int, int] | None:
        return None

    def read_parts(self, name: str) -> np.ndarray:
        """The parts/<stem>.png label map (H, W) of the image (DatasetError when it has none)."""
        path = self.root / "parts" / f"{name}.png"
        if not path.is_file():
            raise DatasetError(f"training set {self.root} has no parts/{name}.png (source option parts = true)")
        return _decode_mask(path, str(path))

    def split_key(self, name: str) -> str:
        """The name the held-out split hashes: "<set>/<stem>", the same as in a pack of this folder."""
        return f"{self.name}/{name}"


class PackSource:
    """A training set packed by `fbrs pack-data` into one zip file (opened lazily in each process)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"training pack not found: {self.path}")
        try:
            with zipfile.ZipFile(self.path) as archive:
                index = json.loads(archive.read("index.json"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
            raise DatasetError(f"{self.path} is not a training pack written by fbrs pack-data: {error}") from None
        if index.get("format") != PACK_FORMAT:
            raise DatasetError(f"{self.path}: unknown pack format {index.get('format')!r}, expected {PACK_FORMAT}")
        self.name = self.path.stem
        self._entries = {entry["name"]: entry for entry in index["images"]}
        self._archive: zipfile.ZipFile | None = None
        self._archive_pid = -1

    def _open(self) -> zipfile.ZipFile:
        # A zip handle must not be shared across forked DataLoader workers.
        if self._archive is None or self._archive_pid != os.getpid():
            self._archive = zipfile.ZipFile(self.path)
            self._archive_pid = os.getpid()
        return self._archive

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_archive"], state["_archive_pid"] = None, -1
        return state

    def names(self) -> list[str]:
        return list(self._entries)

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        entry, archive = self._entries[name], self._open()
        with Image.open(io.BytesIO(archive.read(entry["image"]))) as pil:
            image = as_rgb_uint8(np.asarray(pil.convert("RGB")))
        mask = _decode_mask(archive.read(entry["mask"]), f"{self.path}:{entry['mask']}")
        ignore = None
        if entry.get("ignore"):
            ignore = _decode_mask(archive.read(entry["ignore"]), f"{self.path}:{entry['ignore']}")
        return image, mask, ignore

    def stored_areas(self, name: str) -> dict[int, int] | None:
        return {int(key): int(value) for key, value in self._entries[name]["areas"].items()}

    def read_parts(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        if not entry.get("parts"):
            raise DatasetError(f"{self.path}: {name} has no parts map (source option parts = true)")
        return _decode_mask(self._open().read(entry["parts"]), f"{self.path}:{entry['parts']}")

    def has_parts(self, name: str) -> bool:
        return bool(self._entries[name].get("parts"))

    def split_key(self, name: str) -> str:
        return name  # already "<set>/<stem>"


class DatasetSource:
    """Any layout `fbrs.evaluation.datasets.load_dataset` reads (SBD, PASCAL VOC, COCO json, ...), one
    object per sample. Other objects of the same image are not known here, so the "other objects"
    negative strategy never fires for these sources."""

    def __init__(self, path: str, split: str) -> None:
        from fbrs.evaluation.datasets import load_dataset

        self.dataset = load_dataset(path, split=split)
        self.name = self.dataset.name
        self._index = {name: i for i, name in enumerate(self.dataset.sample_names())}

    def names(self) -> list[str]:
        return list(self._index)

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sample = self.dataset[self._index[name]]
        return sample.image, sample.mask.astype(np.uint8), sample.ignore.astype(np.uint8)

    def stored_areas(self, name: str) -> dict[int, int] | None:
        return None

    def split_key(self, name: str) -> str:
        # Objects of one image must fall on the same side of the split: hash the image part of the name.
        return f"{self.name}/{name.split('#')[0]}"


#: ccp_person labels split into connected components (face, each arm, each leg) instead of one region each.
COMPONENT_LABELS = ("skin",)
_COMPONENT_ID_BASE = 100  # component k of such a label gets id 100 + k (garment ids are their labels, 1..58)


def garment_regions(labels: np.ndarray, merge_area: float, component_labels: tuple[int, ...] = ()) -> np.ndarray:
    """Objects from a parts label map (ccp_person's `parts/`: 0 = background, 1..58 = garments, skin, hair).

    Each connected piece of a label smaller than `merge_area` pixels (a strap, a ring, a sliver of a bag
    behind an arm) is merged into the label it borders most, smallest first, so that it neither becomes a
    target of its own nor leaves a hole in its neighbour; a piece with no labelled neighbour becomes
    background. Then every label is one object with its label as id, except the labels in
    `component_labels` (skin), whose connected pieces become one object each (ids 100, 101, ...).
    Returns the (H, W) int32 instance map; which objects are large enough to train on is decided by the
    index (`data.min_object_area`) as for any other mask."""
    result = labels.astype(np.int32)
    pieces = []
    for label in np.unique(result):
        if label == 0:
            continue
        components, _ = ndimage.label(result == label)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            area = int((components[box] == index).sum())
            if area < merge_area:
                pieces.append((area, box, components, index))
    for _, box, components, index in sorted(pieces, key=lambda item: item[0]):
        grown = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        piece = components[grown] == index
        ring = ndimage.binary_dilation(piece) & ~piece
        neighbours = result[grown][ring]
        neighbours = neighbours[neighbours != result[grown][piece][0]]
        neighbours = neighbours[neighbours > 0]
        window = result[grown]
        window[piece] = np.bincount(neighbours).argmax() if len(neighbours) else 0
    next_id = _COMPONENT_ID_BASE
    for label in component_labels:
        components, count = ndimage.label(result == label)
        for index in range(1, count + 1):
            result[components == index] = next_id
            next_id += 1
    return result


class ConfiguredSource:
    """A source as one `[[data.sources]]` entry configures it: `sets` of a pack, `ignore_value`, `parts`.

    read() gives (image (H, W, 3) uint8, instance map (H, W), ignore (H, W) uint8 or None) at the stored
    resolution with the options applied."""

    def __init__(self, base: Source, options: DataSource, min_object_area: int, max_side: int) -> None:
        self.base, self.options = base, options
        self.name = base.name
        self.min_object_area, self.max_side = min_object_area, max_side
        self._component_labels: tuple[int, ...] = ()
        if options.parts:
            self._component_labels = _component_label_values(options.path, options.kind)

    def names(self) -> list[str]:
        names = self.base.names()
        if self.options.sets:
            names = [name for name in names if name.split("/", 1)[0] in self.options.sets]
        if self.options.parts and isinstance(self.base, PackSource):
            names = [name for name in names if self.base.has_parts(name)]
        return names

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image, mask, ignore = self.base.read(name)
        if self.options.parts:
            labels = self.base.read_parts(name)
            scale = min(1.0, self.max_side / max(labels.shape)) if self.max_side > 0 else 1.0
            # Merging happens at the stored resolution: the threshold is the training minimum, scaled up.
            mask = garment_regions(labels, self.min_object_area / scale**2, self._component_labels)
        elif self.options.ignore_value:
            marked = mask == self.options.ignore_value
            if marked.any():
                ignore = (marked | (ignore > 0 if ignore is not None else False)).astype(np.uint8)
                mask = np.where(marked, 0, mask)
        return image, mask, ignore

    def stored_areas(self, name: str) -> dict[int, int] | None:
        if self.options.parts:
            return None
        areas = self.base.stored_areas(name)
        if areas is not None and self.options.ignore_value:
            areas.pop(self.options.ignore_value, None)
        return areas

    def split_key(self, name: str) -> str:
        return self.base.split_key(name)


def _component_label_values(path: str, kind: str) -> tuple[int, ...]:
    """The values of COMPONENT_LABELS in the parts_labels.json of the folder (or of the pack's index)."""
    if kind == "folder" and (Path(path) / "parts_labels.json").is_file():
        names = json.loads((Path(path) / "parts_labels.json").read_text())["labels"]
        return tuple(names.index(label) for label in COMPONENT_LABELS if label in names)
    if kind == "pack":
        with zipfile.ZipFile(path) as archive:
            per_set = json.loads(archive.read("index.json")).get("parts_labels", {})
        values = {names.index(label) for names in per_set.values() for label in COMPONENT_LABELS if label in names}
        return tuple(sorted(values))
    return ()


def _from_pack(source: DataSource, pack: str) -> DataSource:
    """With `data.pack`, a folder source becomes the pack's set of the same name (weight and options kept)."""
    if not pack or source.kind != "folder":
        return source
    return dataclasses.replace(source, path=pack, kind="pack", sets=(Path(source.path).name,))


Source = FolderSource | PackSource | DatasetSource


def open_source(source: DataSource) -> Source:
    if source.kind == "pack":
        return PackSource(source.path)
    if source.kind == "dataset":
        return DatasetSource(source.path, source.split)
    return FolderSource(source.path)


def object_areas(mask: np.ndarray, ignore: np.ndarray | None = None) -> dict[int, int]:
    """Pixel count of every non-zero value of the instance map (ignored pixels not counted)."""
    values = mask if ignore is None else np.where(ignore > 0, 0, mask)
    ids, counts = np.unique(values, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i != 0}


def index_source(source: Source, min_object_area: int, max_side: int) -> list[ImageRecord]:
    """List the images with at least one object of `min_object_area` pixels (measured after the
    `max_side` downscale); images whose masks are empty are skipped."""
    records = []
    for name in source.names():
        areas = source.stored_areas(name)
        scale_squared = 1.0
        if areas is None:
            image, mask, ignore = source.read(name)
            areas = object_areas(mask, ignore)
            if max_side > 0:
                scale_squared = min(1.0, max_side / max(mask.shape)) ** 2
        kept = sorted((i, a) for i, a in areas.items() if a * scale_squared >= min_object_area)
        if kept:
            records.append(
                ImageRecord(source.split_key(name), name, tuple(i for i, _ in kept), tuple(a for _, a in kept))
            )
    return records


def is_validation_image(key: str, fraction: float) -> bool:
    """Stable split by a hash of "<set>/<stem>": the same images are held out on every machine."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class ValidationObject:
    """A held-out object: image (H, W, 3) uint8, gt (H, W) bool, ignore (H, W) bool."""

    name: str
    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray


class TrainingData:
    """All sources of a config, indexed and split into training records and held-out objects."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        options = [_from_pack(source, config.pack) for source in config.sources]
        self.sources = [ConfiguredSource(open_source(s), s, config.min_object_area, config.max_side) for s in options]
        self.weights = np.array([s.weight for s in config.sources], dtype=np.float64)
        self.train_records: list[list[ImageRecord]] = []
        self.validation_records: list[tuple[int, ImageRecord]] = []
        for source_index, source in enumerate(self.sources):
            records = index_source(source, config.min_object_area, config.max_side)
            training = []
            for record in records:
                if is_validation_image(record.source, config.validation_fraction):
                    if config.sources[source_index].validation:
                        self.validation_records.append((source_index, record))
                else:
                    training.append(record)
            if not training:
                raise DatasetError(
                    f"training set {config.sources[source_index].path} has no image with an object of at "
                    f"least {config.min_object_area} pixels outside the validation split"
                )
            self.train_records.append(training)

    @property
    def num_train_images(self) -> int:
        return sum(len(records) for records in self.train_records)

    @property
    def num_train_objects(self) -> int:
        return sum(len(r.object_ids) for records in self.train_records for r in records)

    def read(self, source_index: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8, instances (H, W) int32, ignore (H, W) bool, after the max_side downscale."""
        image, mask, ignore = self.sources[source_index].read(name)
        image, mask, ignore = _downscale(image, mask, ignore, self.config.max_side)
        ignore_bool = np.zeros(mask.shape, dtype=bool) if ignore is None else ignore > 0
        return image, mask.astype(np.int32), ignore_bool

    def validation_objects(self, max_side: int, min_area: int = 0) -> list[ValidationObject]:
        """Up to `validation_max_objects` held-out objects of at least `min_area` pixels after downscaling
        to `max_side` (deterministic choice)."""
        candidates = []
        for source_index, record in self.validation_records:
            for object_id in record.object_ids:
                key = hashlib.sha256(f"{record.source}/{object_id}".encode()).hexdigest()
                candidates.append((key, source_index, record, object_id))
        candidates.sort(key=lambda item: item[0])
        objects = []
        for _, source_index, record, object_id in candidates:
            if len(objects) >= self.config.validation_max_objects:
                break
            image, instances, ignore = self.read(source_index, record.name)
            image, instances, ignore = _downscale(image, instances, ignore.astype(np.uint8), max_side)
            gt = instances == object_id
            if gt.any() and gt.sum() >= min_area:
                objects.append(ValidationObject(f"{record.source}#{object_id}", image, gt, ignore > 0))
        return objects


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised with the ImageNet mean / std."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


class TrainingDataset(torch.utils.data.Dataset):
    """Random training samples; sample `position` of epoch `epoch` depends only on (seed, epoch, position),
    so runs are reproducible and a resumed run continues with exactly the samples it would have seen.

    Each position draws a source by its weight, an image of it uniformly and one of its objects uniformly."""

    # Crops in which the object is (almost) cut away teach nothing; draw again.
    _MIN_VISIBLE_PIXELS = 50
    _ATTEMPTS = 8

    def __init__(self, data: TrainingData, config: TrainConfig, seed: int) -> None:
        self.data = data
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.length = config.data.samples_per_epoch or data.num_train_images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Sample `key` = (epoch, position), or a position of the epoch set by `set_epoch`. The sample depends
        on (seed, epoch, position) alone, so a resumed run and DataLoader workers that outlive an epoch
        (persistent workers never see `set_epoch` in the main process) draw the same crops and clicks."""
        epoch, position = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, position])
        probabilities = self.data.weights / self.data.weights.sum()
        for _ in range(self._ATTEMPTS):
            source_index = int(rng.choice(len(probabilities), p=probabilities))
            records = self.data.train_records[source_index]
            record = records[int(rng.integers(len(records)))]
            object_id = record.object_ids[int(rng.integers(len(record.object_ids)))]
            image, instances, ignore = self.data.read(source_index, record.name)
            crop = augment_sample(image, instances, ignore, object_id, self.config.augment, rng)
            # Drawn only when on, so that runs without copy-paste keep their samples.
            paste = self.config.augment.copy_paste_probability
            if paste > 0 and rng.random() < paste:
                crop = self._paste_another_object(crop, object_id, rng)
            target = (crop.instances == object_id) & ~crop.ignore
            if target.sum() >= self._MIN_VISIBLE_PIXELS:
                break
        band = self.data.config.sources[source_index].background_band
        if band > 0:
            far = far_unlabelled_background(crop.instances, target, band)
            crop = Crop(crop.image, crop.instances, crop.ignore | far)
        others = (crop.instances > 0) & (crop.instances != object_id)
        clicks = sample_clicks(target, others, crop.ignore, self.config.clicks, rng)
        points = clicks.as_points(self.config.clicks.max_positive, self.config.clicks.max_negative)
        return {
            "image": normalize_image(crop.image),
            "points": torch.from_numpy(points),
            "mask": torch.from_numpy(target.astype(np.float32))[None],
            "valid": torch.from_numpy((~crop.ignore).astype(np.float32))[None],
        }

    def _paste_another_object(self, crop: Crop, object_id: int, rng: np.random.Generator) -> Crop:
        """Copy-paste: a random object of another training image (sources without `parts`: a floating
        garment would be no real object) laid over the crop with fbrs.training.augment.paste_object."""
        donors = [i for i, s in enumerate(self.data.config.sources) if not s.parts]
        if not donors:
            return crop
        weights = self.data.weights[donors] / self.data.weights[donors].sum()
        source_index = donors[int(rng.choice(len(donors), p=weights))]
        records = self.data.train_records[source_index]
        record = records[int(rng.integers(len(records)))]
        donor_id = record.object_ids[int(rng.integers(len(record.object_ids)))]
        image, instances, ignore = self.data.read(source_index, record.name)
        mask = (instances == donor_id) & ~ignore
        if not mask.any():
            return crop
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        settings = self.config.augment
        new_id = max(int(crop.instances.max()), object_id) + 1
        return paste_object(
            crop,
            image[box],
            mask[box],
            new_id,
            object_id,
            settings.copy_paste_scale_range,
            settings.copy_paste_max_occlusion,
            rng,
        )


def far_unlabelled_background(instances: np.ndarray, target: np.ndarray, band: int) -> np.ndarray:
    """(H, W) bool: unlabelled pixels (instance 0) farther than `band` pixels from the (H, W) bool target.

    For partly annotated images (coco_train2017_extra labels only people and vehicles) such pixels may belong
    to an object nobody labelled; the loss and the clicks leave them out instead of teaching them as
    background. Labelled other objects stay in: they are true negatives wherever they are."""
    if not target.any():
        return np.zeros_like(target)
    distance = ndimage.distance_transform_edt(~target)
    return (instances == 0) & (distance > band)


class EpochPositions(torch.utils.data.Sampler):
    """(epoch, position) keys of one epoch for this process (rank): positions start + rank, start + rank +
    world_size, ... The epoch is split between DDP processes like DistributedSampler does, and `start`
    skips what a resumed run already saw. One sampler serves every epoch (`start_epoch`), so the trainer
    keeps one DataLoader whose workers persist instead of starting new ones at each epoch."""

    def __init__(self, length: int, start: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size
        self.start_epoch(epoch, start)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.positions = range(start + self.rank, self.length, self.world_size)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, position) for position in self.positions)

    def __len__(self) -> int:
        return len(self.positions)
