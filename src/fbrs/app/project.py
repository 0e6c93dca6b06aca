"""An annotation folder: the images of IMAGES_DIR, and what has been saved for them in OUT."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.app.errors import AnnotationFileError, UnknownImageError
from fbrs.app.export import (
    ImageAnnotation,
    annotation_paths,
    annotation_segments,
    load_image_annotation,
    save_image_annotation,
    write_coco_files,
)
from fbrs.app.labels import LabelSet
from fbrs.errors import DatasetError, FbrsError
from fbrs.images import image_size, load_image

LOGGER = logging.getLogger("fbrs.app")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class AppLimits:
    """Bounds that keep one user (or one annotation platform) from exhausting the server."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    max_sessions: int = 32
    max_session_bytes: int = 2 * 1024**3  # live sessions' estimated memory (AnnotationSession.memory_bytes)
    display_max_side: int = 1280
    max_json_bytes: int = 64 * 1024  # bodies of the JSON routes (a click is ~40 bytes)


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the file header alone."""
    return image_size(path)


@dataclass
class _ImageStatus:
    width: int
    height: int
    objects: int
    done: bool
    segments: list[dict[str, Any]]  # export.image_segments, cached for rewriting the COCO files


class AnnotationProject:
    """Images of `images_dir` (top level, by sorted file name) and their annotations in `out_dir`.

    Output layout: see `fbrs.app.export`. Default `out_dir`: ``images_dir / "annotations"``.
    """

    def __init__(self, images_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 limits: AppLimits | None = None, labels: LabelSet | None = None) -> None:
        self.images_dir = Path(images_dir)
        self.labels = labels if labels is not None else LabelSet()
        if not self.images_dir.is_dir():
            raise DatasetError(f"images folder not found: {self.images_dir}")
        self.out_dir = Path(out_dir) if out_dir is not None else self.images_dir / "annotations"
        self.limits = limits or AppLimits()
        candidates = sorted(
            path.name for path in self.images_dir.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        )
        if not candidates:
            raise DatasetError(
                f"no images in {self.images_dir} (looked for {', '.join(IMAGE_SUFFIXES)} files)"
            )
        # A file whose header cannot be read (empty, truncated, not an image, a link to something else)
        # is left out with a warning rather than failing the whole list.
        self._skipped: dict[str, str] = {}
        self.image_names = []
        for name in candidates:
            try:
                image_size(self.images_dir / name)
            except FbrsError as error:
                self._skip(name, str(error))
            else:
                self.image_names.append(name)
        if not self.image_names:
            raise DatasetError(f"no readable images in {self.images_dir}: " + "; ".join(self._skipped.values()))
        stems: dict[str, str] = {}
        for name in self.image_names:
            other = stems.setdefault(Path(name).stem, name)
            if other != name:
                raise DatasetError(
                    f"{other} and {name} in {self.images_dir} share a file stem, so their masks would "
                    "overwrite each other; rename one of them"
                )
        self._status: dict[str, _ImageStatus] = {}
        self._lock = threading.RLock()

    def _skip(self, image_name: str, reason: str) -> None:
        if image_name not in self._skipped:
            LOGGER.warning("fbrs app: skipping %s: %s", image_name, reason)
        self._skipped[image_name] = reason

    def skipped_images(self) -> dict[str, str]:
        """{file name: why} of the folder's files that are left out of the image list."""
        return dict(self._skipped)

    def image_path(self, image_name: str) -> Path:
        """Path of a listed image; any other name (including ../ tricks) raises UnknownImageError."""
        if image_name not in self.image_names:
            raise UnknownImageError(f"no image named {image_name!r} in {self.images_dir}")
        return self.images_dir / image_name

    def load_image(self, image_name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a listed image (EXIF orientation applied), after checking the pixel
        limit from its header (ImageTooLargeError)."""
        path = self.image_path(image_name)
        return load_image(path, max_pixels=self.limits.max_image_pixels, what=f"image {path}")

    def saved_annotation(self, image_name: str) -> ImageAnnotation | None:
        return load_image_annotation(self.out_dir, self.image_path(image_name).name)

    def _status_of(self, image_name: str) -> _ImageStatus:
        with self._lock:
            status = self._status.get(image_name)
            if status is None:
                saved = self.saved_annotation(image_name)
                if saved is None:
                    width, height = image_size_of(self.image_path(image_name))
                    status = _ImageStatus(width, height, 0, False, [])
                else:
                    segments = annotation_segments(saved)
                    status = _ImageStatus(saved.width, saved.height, len(saved.objects), saved.done, segments)
                self._status[image_name] = status
            return status

    def image_list(self) -> list[dict[str, Any]]:
        """[{name, width, height, objects, done}] for every readable image, in order. An image that has
        become unreadable (or whose click log is corrupt) is left out and listed by `skipped_images`."""
        listing = []
        for name in self.image_names:
            try:
                status = self._status_of(name)
            except (FbrsError, AnnotationFileError) as error:
                self._skip(name, str(error))
                continue
            self._skipped.pop(name, None)
            listing.append(
                {"name": name, "width": status.width, "height": status.height,
                 "objects": status.objects, "done": status.done}
            )
        return listing

    def save(self, annotation: ImageAnnotation) -> dict[str, str]:
        """Write one image's PNG and click log, then the folder's COCO files. Returns the paths."""
        self.image_path(annotation.image_name)
        with self._lock:
            png_path, log_path = save_image_annotation(self.out_dir, annotation)
            segments = annotation_segments(annotation)
            self._status[annotation.image_name] = _ImageStatus(
                annotation.width, annotation.height, len(annotation.objects), annotation.done, segments
            )
            rle_path, polygon_path = self.write_coco()
        paths = {"click_log": str(log_path), "coco_rle": str(rle_path), "coco_polygons": str(polygon_path)}
        if annotation.objects:
            paths["instance_png"] = str(png_path)
        return paths

    def write_coco(self) -> tuple[Path, Path]:
        with self._lock:
            images = []
            for name in self.image_names:
                try:
                    status = self._status_of(name)
                except (FbrsError, AnnotationFileError) as error:
                    self._skip(name, str(error))  # unreadable since the start: left out, as in the list
                    continue
                images.append((name, status.width, status.height, status.segments))
            # A saved object whose label the list no longer has keeps it, as a category after the list's.
            extra = [segment["label"] for _, _, _, segments in images for segment in segments]
            return write_coco_files(self.out_dir, images, categories=self.labels.categories(extra))

    def instance_png_path(self, image_name: str) -> Path:
        return annotation_paths(self.out_dir, image_name)[0]
