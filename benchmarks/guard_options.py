"""Choose the f-BRS guard's parameters (fbrs.inference.brs.guard) on held-out TRAINING objects only.

    python benchmarks/guard_options.py --per-set 8 --mode f-BRS-B --out work/guard_options.jsonl

Held out = the images the training split never trained on (`is_validation_image("<set>/<stem>", 0.05)`,
the split of every fbrs training recipe, the bundled model's included), of coco_train2017 (largest
instance), ccp_person, oxford_pets and weizmann_horses; downscaled to a longer side of 512 as in
training. The standard robot (20 clicks, stop at IoU 0.90, the protocol's Zoom-In and flip) runs every
candidate GuardConfig (and the unguarded mode); prints NoC@85/90, #>=20 and the number of objects that
lose > 0.3 IoU from their best so far at some click. Never run this on GrabCut, Berkeley or DAVIS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import curve_metrics
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference import create_predictor
from fbrs.inference.brs.guard import GuardConfig
from fbrs.training.data import is_validation_image

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
SETS = ("coco_train2017", "ccp_person", "oxford_pets", "weizmann_horses")
CANDIDATES = {
    "off": False,
    "r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, insist=None),
    "r0.25-t0.1": GuardConfig(radius=0.25, max_far_change=0.1, insist=None),
    "r0.15-t0.2": GuardConfig(radius=0.15, max_far_change=0.2, insist=None),
    "r0.5-t0.2": GuardConfig(radius=0.5, max_far_change=0.2, insist=None),
    # s: count only far flips against the nearest click's label; i<x>: an insisting click may change up to x
    # far away (brs.guard; i: anything). The first round's candidates above have no insisting rule.
    "s-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, signed=True, insist=None),
    "s-r0.25-t0.1": GuardConfig(radius=0.25, max_far_change=0.1, signed=True, insist=None),
    "i-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, insist=1.0),
    "i0.5-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, insist=0.5),
    "i0.3-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, insist=0.3),
    "si-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, signed=True, insist=1.0),
    "si0.5-r0.25-t0.2": GuardConfig(radius=0.25, max_far_change=0.2, signed=True, insist=0.5),
    # p<x>: also damp a solution that changes more than x of the previous click's mask far from the new click
    # (and more than the network's own answer does there): GuardConfig.previous_far_change
    "i0.3-p0.3": GuardConfig(previous_far_change=0.3),
    "i0.3-p0.2": GuardConfig(previous_far_change=0.2),
    "i0.3-p0.1": GuardConfig(previous_far_change=0.1),
}


def held_out_samples(per_set: int, max_side: int = 512) -> list[Sample]:
    """The first `per_set` held-out images (with an object of >= 400 px) of each set, as Samples."""
    samples = []
    for name in SETS:
        folder = TRAIN / name
        taken = 0
        for image_path in sorted((folder / "images").iterdir()):
            if taken == per_set:
                break
            if not is_validation_image(f"{name}/{image_path.stem}", 0.05):
                continue
            mask_path = folder / "masks" / f"{image_path.stem}.png"
            if not mask_path.is_file():
                continue
            labels = np.asarray(Image.open(mask_path))
            if name.startswith("coco"):  # instance ids: the largest instance
                ids, counts = np.unique(labels[(labels > 0) & (labels < 255)], return_counts=True)
                mask = labels == ids[np.argmax(counts)] if len(ids) else np.zeros(labels.shape, bool)
            else:
                mask = labels > 0
            ignore = labels == 255 if name.startswith("coco") else np.zeros_like(mask)
            ignore_path = folder / "ignore" / f"{image_path.stem}.png"
            if ignore_path.is_file():
                ignore = ignore | (np.asarray(Image.open(ignore_path)) > 0)
            image = Image.open(image_path).convert("RGB")
            scale = max_side / max(image.size)
            if scale < 1:
                size = (round(image.width * scale), round(image.height * scale))
                image = image.resize(size, Image.BILINEAR)
                mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
                ignore = np.asarray(Image.fromarray(ignore).resize(size, Image.NEAREST))
            if mask.sum() < 400:
                continue
            samples.append(Sample(np.asarray(image), mask, ignore, f"{name}/{image_path.stem}"))
            taken += 1
    return samples


#: Candidates whose guard never acts where the default GuardConfig never acts: `signed` counts a subset of
#: the default's far flips, `insist` only acts at the click after a damped one. On an object where the
#: default guard never acted (logged "acted": false, or, in older logs, a curve identical to "off"), their
#: run is the unguarded one, so it is copied instead of recomputed (marked "copied" in the log).
SUBSET_OF_DEFAULT = (
    "s-r0.25-t0.2", "i-r0.25-t0.2", "i0.5-r0.25-t0.2", "i0.3-r0.25-t0.2", "si-r0.25-t0.2", "si0.5-r0.25-t0.2"
)


class ActionLog:
    """Wraps a predictor: records whether its f-BRS guard damped or rejected any click's solution."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.acted = False

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def add_click(self, y: float, x: float, positive: bool) -> np.ndarray:
        probabilities = self.predictor.add_click(y, x, positive)
        fraction = getattr(self.predictor.refiner, "last_guard_fraction", None)
        self.acted |= fraction is not None and fraction < 1.0
        return probabilities


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-set", type=int, default=8)
    parser.add_argument("--mode", default="f-BRS-B", help="an f-BRS mode (DeepLab or SAM family)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--out", type=Path, default=Path("work/guard_options.jsonl"))
    parser.add_argument("--backend", default="torch", help="DeepLab modes: torch or onnx (same numbers up to rounding)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.candidates.split(",")
    done: dict[tuple[str, str], list[float]] = {}
    acted: dict[tuple[str, str], bool] = {}
    if args.out.is_file():  # resume
        for line in args.out.read_text().splitlines():
            record = json.loads(line)
            if record["mode"] == args.mode:
                done[(record["sample"], record["candidate"])] = record["ious"]
                if "acted" in record:
                    acted[(record["sample"], record["candidate"])] = record["acted"]
    samples = held_out_samples(args.per_set)
    print(f"{len(samples)} held-out training objects")
    with open(args.out, "a") as log:
        for sample in samples:
            for name in names:
                if (sample.name, name) in done:
                    continue
                default, off = (sample.name, "r0.25-t0.2"), (sample.name, "off")
                default_idle = default in done and off in done and (
                    not acted[default] if default in acted else done[default] == done[off]
                )
                if name in SUBSET_OF_DEFAULT and default_idle:
                    done[(sample.name, name)] = done[off]
                    log.write(json.dumps({"mode": args.mode, "sample": sample.name, "candidate": name,
                                          "ious": done[off], "acted": False, "copied": True}) + "\n")
                    log.flush()
                    continue
                options = {} if args.mode.startswith("SAM") else {"zoom_in_target_size": 400, "backend": args.backend}
                predictor = ActionLog(create_predictor(args.mode, guard=CANDIDATES[name], **options))
                result = evaluate_sample(predictor, sample)
                done[(sample.name, name)] = result.ious
                acted[(sample.name, name)] = predictor.acted
                log.write(json.dumps({"mode": args.mode, "sample": sample.name, "candidate": name,
                                      "ious": result.ious, "acted": predictor.acted,
                                      "spc": float(np.mean(result.click_seconds))}) + "\n")
                log.flush()
    for name in names:
        curves = [done[(sample.name, name)] for sample in samples if (sample.name, name) in done]
        m = curve_metrics(curves)
        print(f"{args.mode} {name}: objects {len(curves)} NoC@85 {m['noc@85']:.2f} NoC@90 {m['noc@90']:.2f} "
              f"#>=20 {m['over_max@90']:.0f} collapses {m['collapses']:.0f}")


if __name__ == "__main__":
    main()
