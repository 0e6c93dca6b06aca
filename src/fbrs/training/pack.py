"""`fbrs pack-data`: a compact one-file copy of training folders (longest side <= 512 by default), small
enough to ship to a GPU machine together with the code (the transfer limit there is 64 MiB).

The pack is a zip file (stored, not deflated: JPEG and PNG are compressed already) holding
`images/<set>/<stem>.jpg`, `masks/<set>/<stem>.png`, `ignore/<set>/<stem>.png`, `parts/<set>/<stem>.png`
(where the folder has a `parts/` label map, e.g. ccp_person; its `parts_labels.json` goes into the index) and an
`index.json` with every image's object areas, so that indexing a pack reads no image at all.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fbrs.errors import DatasetError
from fbrs.io_utils import atomic_path
from fbrs.training.data import PACK_FORMAT, FolderSource, _downscale, object_areas


@dataclass(frozen=True)
class PackSummary:
    path: Path
    images: int
    objects: int
    bytes: int


def _encode(array: np.ndarray, image_format: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    else:
        Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def pack_training_data(
    folders: list[str | os.PathLike],
    output: str | os.PathLike,
    max_side: int = 512,
    quality: int = 90,
    max_bytes: int | None = None,
    progress: bool = True,
) -> PackSummary:
    """Pack training folders (images/ + masks/ [+ ignore/] layout) into one zip at `output`.

    Images are downscaled so that their longest side is at most `max_side` and re-encoded as JPEG of
    `quality`; masks keep their values (nearest-neighbour resize). Images with empty masks are left out.
    Raises DatasetError if the result is larger than `max_bytes` (the file is then not written)."""
    if max_side < 16:
        raise DatasetError(f"max_side must be at least 16 pixels, got {max_side}")
    sources = [FolderSource(folder) for folder in folders]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise DatasetError(f"training folders must have distinct names, got {names}")
    entries, object_count = [], 0
    output = Path(output)
    with atomic_path(output) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
            for source in sources:
                for name in tqdm(source.names(), desc=f"pack {source.name}", disable=not progress):
                    image, mask, ignore = source.read(name)
                    image, mask, ignore = _downscale(image, mask, ignore, max_side)
                    areas = object_areas(mask, ignore)
                    if not areas:
                        continue
                    entry = {
                        "name": f"{source.name}/{name}",
                        "image": f"images/{source.name}/{name}.jpg",
                        "mask": f"masks/{source.name}/{name}.png",
                        "areas": {str(key): value for key, value in areas.items()},
                    }
                    archive.writestr(entry["image"], _encode(image, "JPEG", quality))
                    archive.writestr(entry["mask"], _encode(mask, "PNG"))
                    if ignore is not None and ignore.any():
                        entry["ignore"] = f"ignore/{source.name}/{name}.png"
                        archive.writestr(entry["ignore"], _encode(ignore, "PNG"))
                    if (source.root / "parts" / f"{name}.png").is_file():
                        parts = source.read_parts(name)
                        size = (mask.shape[1], mask.shape[0])
                        parts = np.asarray(Image.fromarray(parts).resize(size, Image.NEAREST))
                        entry["parts"] = f"parts/{source.name}/{name}.png"
                        archive.writestr(entry["parts"], _encode(parts, "PNG"))
                    entries.append(entry)
                    object_count += len(areas)
            parts_labels = {
                source.name: json.loads((source.root / "parts_labels.json").read_text())["labels"]
                for source in sources
                if (source.root / "parts_labels.json").is_file()
            }
            index = {
                "format": PACK_FORMAT,
                "max_side": max_side,
                "sources": names,
                "images": entries,
                "parts_labels": parts_labels,
            }
            archive.writestr("index.json", json.dumps(index))
        size = temporary.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DatasetError(
                f"pack would be {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.1f} MiB; "
                "lower --max-side or --quality, or pack fewer folders"
            )
    return PackSummary(output, len(entries), object_count, size)
