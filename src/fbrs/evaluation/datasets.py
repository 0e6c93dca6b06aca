"""Dataset loaders for interactive segmentation: one sample = one object of one image.

Every loader yields `Sample(image, mask, ignore, name)`:
  image  (H, W, 3) uint8 RGB
  mask   (H, W) bool, True = the object
  ignore (H, W) bool, True = excluded from the IoU and from click placement (e.g. GrabCut's boundary band)

Supported layouts (`load_dataset` detects them from the folder contents):
  * shared layout: `images/` + `masks/` + `pairs.tsv` (image path <TAB> mask path, header line).
  * GrabCut original (`data_GT/` + `boundary_GT/`), Berkeley original (`images/` + `masks/`),
    DAVIS-345 / COCO_MVal original (`img/` + `gt/`).
  * SBD (`img/*.jpg`, `inst/*.mat`, `val.txt`): one sample per instance of `GTinst.Segmentation`.
  * PASCAL VOC (`JPEGImages/`, `SegmentationObject/*.png`, `ImageSets/Segmentation/val.txt`): one sample per
    instance, palette index 255 (the "void" boundary) = ignore.
  * generic folder `images/` + `masks/` (+ optional `ignore/`), paired by file stem.
  * COCO instances json (`load_dataset("instances.json", images_dir=...)`): one sample per non-crowd
    annotation, crowd regions of the same image = ignore.

Mask encodings (how a mask file becomes object/ignore), chosen per dataset, overridable:
  * "threshold128": the GrabCut/Berkeley rule of the original code: first colour channel as OpenCV reads it
    (blue), value 128 = ignore, > 128 = object.
  * "nonzero": the DAVIS rule: any non-zero colour = object (palette masks are read as colours, like OpenCV).
  * "instances": every distinct non-zero value is one object (one sample each); 255 = ignore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import DatasetError
from fbrs.images import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_ENCODINGS = ("threshold128", "nonzero", "instances")
IGNORE_VALUE = 255  # "instances" encoding: VOC's void label / our convention for ignore

# Canonical names of the standard benchmarks -> (folder name, mask encoding of their original release).
STANDARD_DATASETS: dict[str, tuple[str, str]] = {
    "grabcut": ("GrabCut", "threshold128"),
    "berkeley": ("Berkeley", "threshold128"),
    "davis": ("DAVIS", "nonzero"),
    "coco_mval": ("COCO_MVal", "nonzero"),
    "sbd": ("SBD", "instances"),
    "pascalvoc": ("PascalVOC", "instances"),
}


@dataclass(frozen=True)
class Sample:
    """One evaluation/training sample. Unpacks as `image, mask, ignore = sample`.

    image: (H, W, 3) uint8 RGB. mask: (H, W) bool object. ignore: (H, W) bool pixels to leave out.
    name: unique within its dataset (image stem, plus `#<id>` when an image holds several objects).
    """

    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray
    name: str

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.image, self.mask, self.ignore))

    def gt_labels(self) -> np.ndarray:
        """(H, W) int32 in the original code's encoding: 1 object, 0 background, -1 ignore."""
        labels = self.mask.astype(np.int32)
        labels[self.ignore] = -1
        return labels


@dataclass(frozen=True)
class _SampleRef:
    """Where one sample comes from; cheap to hold and to pickle (no pixels)."""

    name: str
    image_path: Path
    mask_path: Path | None = None
    instance_id: int | None = None  # for multi-object masks / COCO annotation index
    ignore_path: Path | None = None
    extra: Any = None  # COCO: (annotation, crowd annotations)


class Dataset(Sequence):
    """A list of samples with a name. `dataset[i]` reads sample i from disk (nothing is cached).

    Attributes: name (e.g. "GrabCut"), root (the folder or json file it was loaded from),
    mask_encoding (see the module docstring).
    """

    def __init__(self, name: str, root: Path, refs: list[_SampleRef], mask_encoding: str) -> None:
        self.name = name
        self.root = Path(root)
        self.mask_encoding = mask_encoding
        self._refs = refs

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {self.name} ({len(self)} samples)")
        ref = self._refs[int(index)]
        image = read_image(ref.image_path)
        mask, ignore = self._read_target(ref, image.shape[:2])
        return Sample(image=image, mask=mask, ignore=ignore, name=ref.name)

    def sample_names(self) -> list[str]:
        """Names of all samples, in index order, without reading any pixels."""
        return [ref.name for ref in self._refs]

    def image_path(self, index: int) -> Path:
        return self._refs[index].image_path

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, root={str(self.root)!r}, samples={len(self)})"

    def _read_target(self, ref: _SampleRef, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        assert ref.mask_path is not None
        raw = read_mask_file(ref.mask_path)
        mask, ignore = decode_mask(raw, self.mask_encoding, ref.instance_id, path=ref.mask_path)
        if ref.ignore_path is not None:
            ignore = ignore | (read_mask_file(ref.ignore_path).single_channel() != 0)
        _check_shape(mask, image_shape, ref)
        return mask, ignore & ~mask


# ----------------------------------------------------------------------------------------------------------
# Mask decoding


@dataclass(frozen=True)
class RawMask:
    """A mask file's values, unchanged: (H, W) for L/I/P modes (palette indices for P), (H, W, 3) for RGB.
    palette: (256, 3) uint8 RGB colours of a palette image, else None."""

    values: np.ndarray
    palette: np.ndarray | None = None

    def as_bgr(self) -> np.ndarray:
        """The mask as OpenCV's imread sees it (palette resolved to colours): (H, W, 3) BGR or (H, W)."""
        if self.palette is not None:
            return self.palette[self.values][..., ::-1]
        return self.values[..., ::-1] if self.values.ndim == 3 else self.values

    def single_channel(self) -> np.ndarray:
        """(H, W) values: palette indices, gray values, or the max over colour channels."""
        return self.values.max(axis=2) if self.values.ndim == 3 else self.values


def read_mask_file(path: Path) -> RawMask:
    """Read a mask image without changing its values (RGBA loses alpha); DatasetError names the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask file not found: {path}")
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode == "RGBA":
                pil = pil.convert("RGB")
            values = np.asarray(pil)
            palette = None
            if pil.mode == "P":
                # Keep the indices (VOC ids) and the colours: the original code reads palette PNGs through
                # OpenCV, i.e. as colours (DAVIS rule "any non-zero colour").
                flat = np.asarray(pil.getpalette() or [], np.uint8)
                palette = np.zeros((256, 3), np.uint8)
                palette[: len(flat) // 3] = flat[: len(flat) // 3 * 3].reshape(-1, 3)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read mask {path}: {error}") from None
    if values.ndim not in (2, 3):
        raise DatasetError(f"mask {path} has shape {values.shape}; expected (H, W) or (H, W, 3)")
    return RawMask(values, palette)


def decode_mask(
    raw: RawMask, encoding: str, instance_id: int | None = None, path: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a raw mask array (from `read_mask_file`) into (object (H, W) bool, ignore (H, W) bool).

    encoding: "threshold128" | "nonzero" | "instances" (module docstring); "instances" needs `instance_id`.
    """
    where = f" in {path}" if path is not None else ""
    if encoding == "threshold128":
        colors = raw.as_bgr()
        channel = colors[..., 0] if colors.ndim == 3 else colors  # cv2.imread(mask)[:, :, 0] = blue
        if channel.dtype != np.uint8:
            raise DatasetError(f"threshold128 masks must be 8-bit, got {channel.dtype}{where}")
        return channel > 128, channel == 128
    if encoding == "nonzero":
        colors = raw.as_bgr()
        values = colors.max(axis=2) if colors.ndim == 3 else colors
        mask = values > 0
        return mask, np.zeros_like(mask)
    if encoding == "instances":
        if instance_id is None:
            raise DatasetError(f"instances mask{where} needs an instance id")
        labels = raw.single_channel()
        return labels == instance_id, labels == IGNORE_VALUE
    raise DatasetError(f"unknown mask encoding {encoding!r}; expected one of {', '.join(MASK_ENCODINGS)}")


def instance_ids(labels: np.ndarray) -> list[int]:
    """Sorted non-zero ids of an (H, W) instance-id array, without the ignore value 255."""
    values = np.unique(labels)
    return [int(v) for v in values if v != 0 and v != IGNORE_VALUE]


def _check_shape(mask: np.ndarray, image_shape: tuple[int, int], ref: _SampleRef) -> None:
    if mask.shape != tuple(image_shape):
        raise DatasetError(
            f"mask {ref.mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{ref.image_path} has {image_shape[1]}x{image_shape[0]}; expected the same size"
        )


# ----------------------------------------------------------------------------------------------------------
# Layouts


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: folder not found: {path}")
    return path


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            files.setdefault(path.stem, path)
    return files


def _pair_by_stem(images_dir: Path, masks_dir: Path, ignore_dir: Path | None = None) -> list[_SampleRef]:
    """Pair `masks_dir/<stem>.*` with `images_dir/<stem>.*`. A mask stem ending in 'a'/'b' whose own image
    is missing falls back to the stem without it (Berkeley: 189011a.png -> 189011.jpg)."""
    images = _files_by_stem(images_dir)
    masks = _files_by_stem(masks_dir)
    if not masks:
        raise DatasetError(f"no mask files ({', '.join(IMAGE_SUFFIXES)}) in {masks_dir}")
    ignores = _files_by_stem(ignore_dir) if ignore_dir is not None and ignore_dir.is_dir() else {}
    refs = []
    for stem, mask_path in masks.items():
        image_path = images.get(stem)
        if image_path is None and stem[-1:] in ("a", "b"):
            image_path = images.get(stem[:-1])
        if image_path is None:
            raise DatasetError(f"mask {mask_path} has no image: expected {images_dir}/{stem}.<jpg|png|bmp|...>")
        refs.append(_SampleRef(stem, image_path, mask_path, ignore_path=ignores.get(stem)))
    return refs


def _read_pairs_tsv(root: Path) -> list[_SampleRef]:
    """`pairs.tsv`: a header line, then `image<TAB>mask` paths relative to `root`."""
    path = root / "pairs.tsv"
    refs = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip() or (line_number == 1 and line.lower().startswith("image")):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DatasetError(f"{path}:{line_number}: expected 'image<TAB>mask', got {line!r}")
        image_path, mask_path = root / parts[0].strip(), root / parts[1].strip()
        for file, what in ((image_path, "image"), (mask_path, "mask")):
            if not file.is_file():
                raise DatasetError(f"{path}:{line_number}: {what} file not found: {file}")
        refs.append(_SampleRef(mask_path.stem, image_path, mask_path))
    if not refs:
        raise DatasetError(f"{path} lists no samples")
    return refs


def _expand_instances(refs: list[_SampleRef]) -> list[_SampleRef]:
    """One ref per instance id found in each mask (reads every mask once)."""
    expanded = []
    for ref in refs:
        assert ref.mask_path is not None
        for object_id in instance_ids(read_mask_file(ref.mask_path).single_channel()):
            expanded.append(
                _SampleRef(f"{ref.name}#{object_id}", ref.image_path, ref.mask_path, object_id, ref.ignore_path)
            )
    return expanded


def _read_split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"split list not found: {path} (expected one image id per line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split list {path} is empty")
    return names


class SBDDataset(Dataset):
    """SBD: `img/<id>.jpg`, `inst/<id>.mat` (GTinst.Segmentation), `<split>.txt`; one sample per instance."""

    def __init__(self, root: Path, split: str = "val", name: str = "SBD") -> None:
        root = Path(root)
        images_dir, inst_dir = _require_dir(root / "img", "SBD"), _require_dir(root / "inst", "SBD")
        refs = []
        for image_id in _read_split_list(root / f"{split}.txt"):
            mat_path = inst_dir / f"{image_id}.mat"
            for object_id in instance_ids(read_sbd_instances(mat_path)):
                refs.append(_SampleRef(f"{image_id}#{object_id}", images_dir / f"{image_id}.jpg", mat_path, object_id))
        super().__init__(name, root, refs, "instances")

    def _read_target(self, ref: _SampleRef, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        assert ref.mask_path is not None
        labels = read_sbd_instances(ref.mask_path)
        mask = labels == ref.instance_id
        _check_shape(mask, image_shape, ref)
        # The original SBD evaluation has no ignore label: every other pixel is background.
        return mask, np.zeros_like(mask)


def read_sbd_instances(mat_path: Path) -> np.ndarray:
    """(H, W) int32 instance ids of an SBD `inst/*.mat` file (0 = background)."""
    from scipy.io import loadmat

    if not Path(mat_path).is_file():
        raise DatasetError(f"SBD instance file not found: {mat_path}")
    try:
        segmentation = loadmat(str(mat_path))["GTinst"]["Segmentation"][0][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise DatasetError(
            f"cannot read {mat_path}: expected a MATLAB file with GTinst.Segmentation ({error})"
        ) from None
    return np.asarray(segmentation).astype(np.int32)


class CocoJsonDataset(Dataset):
    """COCO instances json: one sample per non-crowd annotation; crowd regions of that image = ignore.

    Polygons are filled with PIL (pixel-centre rule), so edges can differ by a pixel from pycocotools.
    """

    def __init__(self, json_path: Path, images_dir: Path | None = None, name: str | None = None) -> None:
        json_path = Path(json_path)
        try:
            content = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read COCO json {json_path}: {error}") from None
        if not isinstance(content, dict) or "images" not in content or "annotations" not in content:
            raise DatasetError(f"{json_path} is not a COCO instances file: expected 'images' and 'annotations'")
        if images_dir is None:
            candidates = [json_path.parent / "images", json_path.parent.parent / "images", json_path.parent]
            images_dir = next((c for c in candidates if c.is_dir()), json_path.parent)
        images_dir = _require_dir(Path(images_dir), "COCO images")
        images = {entry["id"]: entry for entry in content["images"]}
        crowds: dict[Any, list[dict]] = {}
        for annotation in content["annotations"]:
            if annotation.get("iscrowd", 0):
                crowds.setdefault(annotation["image_id"], []).append(annotation)
        refs = []
        for annotation in content["annotations"]:
            if annotation.get("iscrowd", 0):
                continue
            image = images.get(annotation["image_id"])
            if image is None:
                raise DatasetError(f"{json_path}: annotation {annotation.get('id')} refers to a missing image")
            extra = (
                image["height"],
                image["width"],
                annotation,
                tuple(crowds.get(annotation["image_id"], ())),
            )
            refs.append(
                _SampleRef(
                    f"{Path(image['file_name']).stem}#{annotation.get('id')}",
                    images_dir / image["file_name"],
                    json_path,
                    extra=extra,
                )
            )
        super().__init__(name or json_path.stem, json_path, refs, "coco")

    def _read_target(self, ref: _SampleRef, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        height, width, annotation, crowd_annotations = ref.extra
        mask = coco_segmentation_to_mask(annotation["segmentation"], height, width)
        ignore = np.zeros_like(mask)
        for crowd in crowd_annotations:
            ignore |= coco_segmentation_to_mask(crowd["segmentation"], height, width)
        _check_shape(mask, image_shape, ref)
        return mask, ignore & ~mask


def coco_segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO `segmentation` (polygon list, RLE with a counts list, or compressed RLE string) -> (H, W) bool."""
    if isinstance(segmentation, list):
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            points = [(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)]
            if len(points) >= 3:
                draw.polygon(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        from fbrs.coco_rle import decode_rle

        try:
            return decode_rle({"size": segmentation.get("size", (height, width)), "counts": segmentation["counts"]})
        except ValueError as error:
            raise DatasetError(f"malformed COCO RLE: {error}") from None
    raise DatasetError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


# ----------------------------------------------------------------------------------------------------------
# Entry point


def default_data_roots() -> list[Path]:
    """Folders searched for standard datasets given by name: $FBRS_DATA, ./data, ./datasets, and the shared
    data folder beside a source checkout."""
    roots = []
    if os.environ.get("FBRS_DATA"):
        roots.append(Path(os.environ["FBRS_DATA"]))
    roots += [Path("data"), Path("datasets")]
    checkout = Path(__file__).resolve().parents[3]
    roots.append(checkout.parent / "shared" / "data")
    return roots


def _standard_key(name: str) -> str | None:
    key = name.lower().replace("-", "_").replace(" ", "_")
    key = {"davis345": "davis", "davis_345": "davis", "voc": "pascalvoc", "pascal_voc": "pascalvoc"}.get(key, key)
    return key if key in STANDARD_DATASETS else None


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    split: str = "val",
    mask_encoding: str | None = None,
    images_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a dataset by standard name ("GrabCut", "Berkeley", "DAVIS", "COCO_MVal", "SBD", "PascalVOC") or by
    path (a dataset folder or a COCO json file).

    root: folder holding the standard datasets (default: `default_data_roots()`).
    split: SBD / VOC split list to use. mask_encoding: override the encoding ("threshold128", "nonzero",
    "instances"). images_dir: COCO json only, folder with the images.
    Raises DatasetError naming the path and the expected layout when it is missing or malformed.
    """
    if mask_encoding is not None and mask_encoding not in MASK_ENCODINGS:
        raise DatasetError(f"unknown mask encoding {mask_encoding!r}; expected one of {', '.join(MASK_ENCODINGS)}")
    text = os.fspath(name_or_path)
    key = _standard_key(text) if os.path.sep not in text else None
    if key is not None and not Path(text).exists():
        folder_name = STANDARD_DATASETS[key][0]
        roots = [Path(root)] if root is not None else default_data_roots()
        for candidate_root in roots:
            for candidate in (candidate_root / folder_name, candidate_root / folder_name.lower()):
                if candidate.is_dir():
                    return _load_path(candidate, folder_name, split, mask_encoding, images_dir)
        looked = ", ".join(str(r / folder_name) for r in roots)
        raise DatasetError(
            f"dataset {folder_name} not found (looked in {looked}); pass --data-root / set FBRS_DATA, "
            f"or give the dataset folder's path"
        )
    path = Path(text)
    if not path.exists():
        raise DatasetError(
            f"dataset not found: {path} is neither a folder, a COCO json file nor a known name "
            f"({', '.join(v[0] for v in STANDARD_DATASETS.values())})"
        )
    return _load_path(path, None, split, mask_encoding, images_dir)


def _load_path(path: Path, name: str | None, split: str, mask_encoding: str | None, images_dir: Any) -> Dataset:
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DatasetError(f"{path}: expected a dataset folder or a COCO instances .json file")
        return CocoJsonDataset(path, Path(images_dir) if images_dir else None, name)
    if name is None:
        key = _standard_key(path.name)
        name = STANDARD_DATASETS[key][0] if key else path.name
    key = _standard_key(name)
    default_encoding = STANDARD_DATASETS[key][1] if key else "nonzero"
    encoding = mask_encoding or default_encoding

    if (path / "inst").is_dir() and (path / "img").is_dir():
        return SBDDataset(path, split, name)
    if (path / "SegmentationObject").is_dir():
        images = _require_dir(path / "JPEGImages", "PASCAL VOC")
        stems = _read_split_list(path / "ImageSets" / "Segmentation" / f"{split}.txt")
        refs = [_SampleRef(stem, images / f"{stem}.jpg", path / "SegmentationObject" / f"{stem}.png") for stem in stems]
        return Dataset(name, path, _expand_instances(refs), mask_encoding or "instances")
    if (path / "pairs.tsv").is_file():
        refs = _read_pairs_tsv(path)
    elif (path / "data_GT").is_dir() and (path / "boundary_GT").is_dir():
        refs = _pair_by_stem(path / "data_GT", path / "boundary_GT")
    elif (path / "img").is_dir() and (path / "gt").is_dir():
        refs = _pair_by_stem(path / "img", path / "gt")
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        refs = _pair_by_stem(path / "images", path / "masks", path / "ignore")
    else:
        raise DatasetError(
            f"{path} has no known dataset layout: expected images/ + masks/ (optionally pairs.tsv), "
            f"data_GT/ + boundary_GT/ (GrabCut), img/ + gt/ (DAVIS, COCO_MVal), img/ + inst/ + val.txt (SBD) "
            f"or JPEGImages/ + SegmentationObject/ (PASCAL VOC)"
        )
    if encoding == "instances":
        refs = _expand_instances(refs)
    return Dataset(name, path, refs, encoding)


@dataclass
class DatasetSpec:
    """What `load_dataset` needs, as plain data (picklable, JSON-able): used by the runner's workers."""

    name_or_path: str
    root: str | None = None
    split: str = "val"
    mask_encoding: str | None = None
    images_dir: str | None = None

    def load(self) -> Dataset:
        return load_dataset(
            self.name_or_path,
            root=self.root,
            split=self.split,
            mask_encoding=self.mask_encoding,
            images_dir=self.images_dir,
        )
