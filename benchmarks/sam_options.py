"""Choose the plain SAM loop's options on held-out TRAINING objects (never on the evaluation sets).

    python benchmarks/sam_options.py --per-set 8 --out work/sam_options.jsonl

Takes the first `--per-set` images of each single-object training set (oxford_pets, weizmann_horses,
ccp_person) and of coco_train2017 (its largest instance), runs the standard robot (20 clicks, stop at
IoU 0.90) for every combination of mask feedback x first-click multimask choice (the encoder runs once per
image: the embedding is cached), and prints NoC@85/90, #>=20 and the number of objects that lose > 0.3
IoU from their best at some click.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image

from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import number_of_clicks
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.models.sam.model import load_default_sam_model

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
SETS = ("oxford_pets", "weizmann_horses", "ccp_person", "coco_train2017")


def training_samples(per_set: int, offset: int = 0) -> list[Sample]:
    samples = []
    for name in SETS:
        folder = TRAIN / name
        images = sorted((folder / "images").iterdir())[offset : offset + 3 * per_set]
        taken = 0
        for image_path in images:
            if taken == per_set:
                break
            mask_path = folder / "masks" / f"{image_path.stem}.png"
            if not mask_path.is_file():
                continue
            labels = np.asarray(Image.open(mask_path))
            if name.startswith("coco"):  # instance ids: the largest instance
                ids, counts = np.unique(labels[(labels > 0) & (labels < 255)], return_counts=True)
                mask = labels == ids[np.argmax(counts)] if len(ids) else np.zeros(labels.shape, bool)
            else:  # binary: 255 = object
                mask = labels > 0
            if mask.sum() < 400:
                continue
            ignore = labels == 255 if name.startswith("coco") else np.zeros_like(mask)
            ignore_path = folder / "ignore" / f"{image_path.stem}.png"
            if ignore_path.is_file():
                ignore = ignore | (np.asarray(Image.open(ignore_path)) > 0)
            image = np.asarray(Image.open(image_path).convert("RGB"))
            samples.append(Sample(image, mask, ignore, f"{name}/{image_path.stem}"))
            taken += 1
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-set", type=int, default=8)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("work/sam_options.jsonl"))
    parser.add_argument("--modes", default="plain", help="plain: the 4 option combinations; or SAM insertions")
    args = parser.parse_args()
    model = load_default_sam_model()
    combos = [
        {"mask_feedback": feedback, "multimask_first_click": multimask}
        for feedback, multimask in itertools.product((True, False), (True, False))
    ]
    if args.modes != "plain":
        combos = [{"insertion": None if name == "none" else name} for name in args.modes.split(",")]
    results: dict[str, list[list[float]]] = {json.dumps(c, sort_keys=True): [] for c in combos}
    with open(args.out, "a") as log:
        for sample in training_samples(args.per_set, args.offset):
            for combo in combos:
                result = evaluate_sample(SamPredictor(model, **combo), sample)
                key = json.dumps(combo, sort_keys=True)
                results[key].append(result.ious)
                log.write(json.dumps({"sample": sample.name, "options": combo, "ious": result.ious,
                                      "spc": float(np.mean(result.click_seconds))}) + "\n")
                log.flush()
    for key, curves in results.items():
        noc85 = np.mean([number_of_clicks(c, 0.85) for c in curves])
        noc90 = np.mean([number_of_clicks(c, 0.90) for c in curves])
        failed = sum(number_of_clicks(c, 0.90) >= 20 and max(c) < 0.90 for c in curves)
        drops = sum(any(max(c[: i + 1]) - v > 0.3 for i, v in enumerate(c)) for c in curves)
        print(f"{key}: objects {len(curves)} NoC@85 {noc85:.2f} NoC@90 {noc90:.2f} #>=20 {failed} drops>0.3 {drops}")


if __name__ == "__main__":
    main()
