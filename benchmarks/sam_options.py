"""Choose the plain SAM loop's options on held-out TRAINING objects (never on the evaluation sets).

    python benchmarks/sam_options.py --per-set 8 --out work/sam_options.jsonl

Takes the first `--per-set` images of each single-object training set (oxford_pets, weizmann_horses,
ccp_person) and of coco_train2017 (its largest instance), runs the standard robot (20 clicks, stop at
IoU 0.90) for every combination of mask feedback x first-click multimask choice (the encoder runs once per
image: the embedding is cached), and prints NoC@85/90, #>=20 and the number of objects that lose > 0.3
IoU from their best at some click.

    python benchmarks/sam_options.py --per-set 40 --offset 8 --out work/sam_scan.jsonl --modes none
    python benchmarks/sam_options.py --guards off,clicks,clicks+far0.2 --scan work/sam_scan.jsonl \
        --out work/sam_guards.jsonl

chooses the feedback guard (fbrs.inference.sam_guard): a scan of more objects with the plain loop finds
those where it collapses (so that the choice has teeth), then every candidate runs on the regular
objects and on the collapsing ones.

    python benchmarks/sam_options.py --zooms off,z1.4,z1.8 --per-set 8 --out work/sam_zoom.jsonl

chooses Zoom-In's settings (fbrs.inference.sam_zoom.SamZoomConfig) on the plain loop the same way (resumable
through --out; also prints the seconds per click and the encoder runs per object).

    python benchmarks/sam_options.py --merges off,m2,m3,m3-mono --per-set 8 --out work/sam_merge.jsonl
    python benchmarks/sam_options.py --merges off,m3 --insertion image_tokens --guard --out work/sam_merge.jsonl

chooses the progressive merge (fbrs.inference.merge.MergeConfig) the same way, on the plain loop or an
f-BRS mode.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import collapses, curve_metrics
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.merge import MergeConfig
from fbrs.inference.sam_guard import FeedbackGuardConfig
from fbrs.inference.sam_modes import SAM_ZOOM
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.inference.sam_zoom import SamZoomConfig
from fbrs.models.sam.model import load_default_sam_model

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
SETS = ("oxford_pets", "weizmann_horses", "ccp_person", "coco_train2017", "coco_train2017_extra")


def training_samples(per_set: int, offset: int = 0, sets: tuple[str, ...] = SETS, small: bool = False) -> list[Sample]:
    """The first `per_set` usable images of each set from `offset` on, one object each (COCO: the largest
    instance; with `small`, the largest instance whose bounding box is at most a third of the image's longer
    side: the small objects that Berkeley and DAVIS have and the sets' first images rarely do)."""
    samples = []
    for name in sets:
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
                if small:
                    keep = [bbox_side(labels == i) * 3 <= max(labels.shape) for i in ids]
                    ids, counts = ids[keep], counts[keep]
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


def bbox_side(mask: np.ndarray) -> int:
    """The longer side of a non-empty (H, W) bool mask's bounding box, in pixels."""
    rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(max(rows[-1] - rows[0], columns[-1] - columns[0]) + 1)


#: Feedback-guard candidates (`--guards`): fbrs.inference.sam_guard.FeedbackGuardConfig or False (off).
GUARDS = {
    "off": False,
    "clicks": FeedbackGuardConfig(rules=("clicks",)),
    "far0.2": FeedbackGuardConfig(rules=("far",), max_far_change=0.2),
    "clicks+far0.2": FeedbackGuardConfig(rules=("clicks", "far"), max_far_change=0.2),
    "clicks+far0.1": FeedbackGuardConfig(rules=("clicks", "far"), max_far_change=0.1),
    "clicks+far0.3": FeedbackGuardConfig(rules=("clicks", "far"), max_far_change=0.3),
    "clicks+far0.2-r0.5": FeedbackGuardConfig(rules=("clicks", "far"), max_far_change=0.2, radius=0.5),
    "far0.3": FeedbackGuardConfig(rules=("far",), max_far_change=0.3),
    "sfar0.2": FeedbackGuardConfig(rules=("far",), max_far_change=0.2, signed=True),
    "sfar0.1": FeedbackGuardConfig(rules=("far",), max_far_change=0.1, signed=True),
    "far0.2x0.5": FeedbackGuardConfig(rules=("far",), max_far_change=0.2, far_ratio=0.5),
    "far0.3x0.5": FeedbackGuardConfig(rules=("far",), max_far_change=0.3, far_ratio=0.5),
    "far0.3x0.75": FeedbackGuardConfig(rules=("far",), max_far_change=0.3, far_ratio=0.75),
    "iou0.05+far0.3x0.75": FeedbackGuardConfig(rules=("iou", "far"), max_far_change=0.3, far_ratio=0.75),
    "clicks+far0.3x0.5": FeedbackGuardConfig(rules=("clicks", "far"), max_far_change=0.3, far_ratio=0.5),
    "iou0.05": FeedbackGuardConfig(rules=("iou",), iou_margin=0.05),
    "clicks+iou0.05": FeedbackGuardConfig(rules=("clicks", "iou"), iou_margin=0.05),
    "clicks+far0.2+iou0.05": FeedbackGuardConfig(rules=("clicks", "far", "iou"), iou_margin=0.05),
    # with the fed-back pass's multimask outputs as alternatives too (or only them)
    "far0.3+mm": FeedbackGuardConfig(alternatives=("no_mask", "multimask")),
    "mm-far0.3": FeedbackGuardConfig(alternatives=("multimask",)),
    "mm-far0.2": FeedbackGuardConfig(alternatives=("multimask",), max_far_change=0.2),
    "clicks+far0.3+mm": FeedbackGuardConfig(rules=("clicks", "far"), alternatives=("no_mask", "multimask")),
    "iou0.05+mm": FeedbackGuardConfig(rules=("iou",), alternatives=("no_mask", "multimask")),
}


#: Zoom-In candidates (`--zooms`): fbrs.inference.sam_zoom.SamZoomConfig or False (off).
ZOOMS = {
    "off": False,
    "z1.4": SamZoomConfig(),
    "z1.8": SamZoomConfig(expansion_ratio=1.8),
    "z1.4-skip2": SamZoomConfig(skip_clicks=2),
    "z1.4-min256": SamZoomConfig(min_crop_size=256),
    "z1.4-gain1": SamZoomConfig(min_gain=1.0),
    "z2.2": SamZoomConfig(expansion_ratio=2.2),
    # only where the crop magnifies a lot (small objects)
    "z1.4-gain2": SamZoomConfig(min_gain=2.0),
    "z1.4-gain3": SamZoomConfig(min_gain=3.0),
    "z2.2-gain2": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0),
    "z1.4-skip2-gain2": SamZoomConfig(skip_clicks=2, min_gain=2.0),
    # the crop's answer only where it agrees with the whole image's
    "z2.2-gain2-a0.5": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.5),
    "z2.2-gain2-a0.6": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.6),
    "z2.2-gain2-a0.7": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.7),
    "z2.2-gain2-a0.8": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.8),
    "z2.2-gain3-a0.7": SamZoomConfig(expansion_ratio=2.2, min_gain=3.0, agreement=0.7),
    "z2.2-a0.7": SamZoomConfig(expansion_ratio=2.2, agreement=0.7),
    "z1.4-gain2-a0.7": SamZoomConfig(min_gain=2.0, agreement=0.7),
    "z1.4-a0.7": SamZoomConfig(agreement=0.7),
    # the agreement check at fewer crop clicks (it is a second transformer pass)
    "z2.2-gain2-a0.7-new": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.7, agreement_checks="new_crop"),
    "z2.2-gain2-a0.7-until": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.7,
                                           agreement_checks="until_agreed"),
    # the same as z2.2-gain2-a0.7 (a rerun under a later code version)
    "z2.2-gain2-a0.7-every": SamZoomConfig(expansion_ratio=2.2, min_gain=2.0, agreement=0.7, agreement_checks="every"),
}


#: Progressive-merge candidates (`--merges`): fbrs.inference.merge.MergeConfig or False (off).
MERGES = {
    "off": False,
    "m2": MergeConfig(start_click=2),
    "m3": MergeConfig(start_click=3),
    "m5": MergeConfig(start_click=5),
    "m2-mono": MergeConfig(start_click=2, monotone=True),
    "m3-mono": MergeConfig(start_click=3, monotone=True),
    "m3-r4": MergeConfig(start_click=3, reach=4.0),
}


def summary(curves: list[list[float]]) -> str:
    m = curve_metrics(curves)
    return (f"objects {len(curves)} NoC@85 {m['noc@85']:.2f} NoC@90 {m['noc@90']:.2f} #>=20 {m['over_max@90']:.0f} "
            f"collapses {m['collapses']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-set", type=int, default=8)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("work/sam_options.jsonl"))
    parser.add_argument("--modes", default="plain", help="plain: the 4 option combinations; or SAM insertions")
    parser.add_argument("--guards", default=None, help=f"feedback-guard candidates instead: {','.join(GUARDS)}")
    parser.add_argument("--zooms", default=None, help=f"Zoom-In candidates instead: {','.join(ZOOMS)}")
    parser.add_argument("--merges", default=None, help=f"progressive-merge candidates instead: {','.join(MERGES)}")
    parser.add_argument("--insertion", default=None,
                        help="--guards, --zooms, --merges: on this f-BRS insertion (default: plain loop)")
    parser.add_argument("--guard", action="store_true", help="--zooms, --merges, --guards: with the f-BRS guard on")
    parser.add_argument("--default-zoom", action="store_true",
                        help="--guards: with SAM_ZOOM's Zoom-In (+ --insertion image_tokens --guard: the default)")
    parser.add_argument("--lbfgs-max-evaluations", type=int, default=None,
                        help="--zooms, --merges with --insertion: L-BFGS evaluations per click (default 20)")
    parser.add_argument("--scan", type=Path, default=None,
                        help="--guards: an earlier plain-loop log (lines {sample, ious}) taken as the 'off' runs")
    parser.add_argument("--sets", default=",".join(SETS), help="training sets, in this order")
    parser.add_argument("--small", action="store_true",
                        help="--zooms, --merges: COCO's small objects (see training_samples)")
    parser.add_argument("--scan-offset", type=int, default=8)
    parser.add_argument("--scan-per-set", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_default_sam_model()
    if args.guards is not None:
        run_guards(args, model)
        return
    if args.zooms is not None:
        run_candidates(args, model, "zoom_in", "zoom", ZOOMS, args.zooms)
        return
    if args.merges is not None:
        run_candidates(args, model, "merge", "merge", MERGES, args.merges)
        return
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
        print(f"{key}: {summary(curves)}")


def run_guards(args: argparse.Namespace, model) -> None:
    """Every --guards candidate on the first --per-set objects of each set ("regular"), and a scan of the
    next --scan-per-set objects of each set: there the plain loop ("off") runs first and the other
    candidates only where it collapses ("collapsing"). Resumable through --out; --scan: earlier plain-loop
    logs (lines {sample, ious}) taken as "off" runs."""
    names = args.guards.split(",")
    done: dict[tuple[str, str], list[float]] = {}
    for path in [args.scan] if args.scan is not None else []:
        for record in map(json.loads, path.read_text().splitlines()):
            done[(record["sample"], "off")] = record["ious"]
    if args.out.is_file():
        for record in map(json.loads, args.out.read_text().splitlines()):
            if (record.get("insertion") == args.insertion and "guard" in record
                    and record.get("fbrs_guard", False) == args.guard
                    and record.get("zoom", False) == args.default_zoom):
                done[(record["sample"], record["guard"])] = record["ious"]
    sets = tuple(args.sets.split(","))
    regular = training_samples(args.per_set, args.offset, sets) if args.per_set else []
    scanned = training_samples(args.scan_per_set, args.scan_offset, sets) if args.scan_per_set else []
    print(f"{len(regular)} regular + {len(scanned)} scanned held-out training objects")

    def run(log, sample: Sample, name: str) -> list[float]:
        if (sample.name, name) not in done:
            zoom = SamZoomConfig(**SAM_ZOOM) if args.default_zoom else False
            predictor = SamPredictor(model, insertion=args.insertion, feedback_guard=GUARDS[name], guard=args.guard,
                                     zoom_in=zoom)
            result = evaluate_sample(predictor, sample)
            done[(sample.name, name)] = result.ious
            log.write(json.dumps({"sample": sample.name, "insertion": args.insertion, "guard": name,
                                  "fbrs_guard": args.guard, "zoom": args.default_zoom, "ious": result.ious,
                                  "spc": float(np.mean(result.click_seconds))}) + "\n")
            log.flush()
        return done[(sample.name, name)]

    collapsing: list[Sample] = []
    with open(args.out, "a") as log:
        for sample in regular:
            for name in names:
                run(log, sample, name)
        for sample in scanned:
            if collapses(run(log, sample, "off")):
                collapsing.append(sample)
                for name in names:
                    run(log, sample, name)
    for group, samples in (("regular", regular), ("collapsing", collapsing), ("all", regular + collapsing)):
        for name in names:
            curves = [done[(s.name, name)] for s in samples if (s.name, name) in done]
            if curves:
                print(f"{group:10s} {name:24s} {summary(curves)}")


def run_candidates(args: argparse.Namespace, model, option: str, key: str, candidates: dict, chosen: str) -> None:
    """Every candidate of `chosen` (comma-separated keys of `candidates`) as the value of the predictor option
    `option`, on the first --per-set objects of each set (plain loop, or --insertion with --guard); logged
    under `key` in --out (resumable)."""
    names = chosen.split(",")
    done: dict[tuple[str, str], dict] = {}
    if args.out.is_file():
        for record in map(json.loads, args.out.read_text().splitlines()):
            if (record.get("insertion") == args.insertion and record.get("guard", False) == args.guard and key in record
                    and record.get("lbfgs_max_evaluations") == args.lbfgs_max_evaluations):
                done[(record["sample"], record[key])] = record
    samples = training_samples(args.per_set, args.offset, tuple(args.sets.split(",")), args.small)
    print(f"{len(samples)} held-out training objects")
    with open(args.out, "a") as log:
        for sample in samples:
            for name in names:
                if (sample.name, name) in done:
                    continue
                extra = {} if args.lbfgs_max_evaluations is None else {
                    "lbfgs_max_evaluations": args.lbfgs_max_evaluations}
                predictor = SamPredictor(model, insertion=args.insertion, guard=args.guard,
                                         **{option: candidates[name]}, **extra)
                encoder_runs = len(model.encoder_seconds)
                result = evaluate_sample(predictor, sample)
                record = {"sample": sample.name, "insertion": args.insertion, "guard": args.guard, key: name,
                          "lbfgs_max_evaluations": args.lbfgs_max_evaluations,
                          "ious": result.ious,
                          "spc": float(np.mean(result.click_seconds)),
                          "encoder_runs": len(model.encoder_seconds) - encoder_runs}
                done[(sample.name, name)] = record
                log.write(json.dumps(record) + "\n")
                log.flush()
    for name in names:
        records = [done[(s.name, name)] for s in samples if (s.name, name) in done]
        if records:
            print(f"{name:14s} {summary([r['ious'] for r in records])} s/click "
                  f"{np.mean([r['spc'] for r in records]):.2f} encoder runs/object "
                  f"{np.mean([r['encoder_runs'] for r in records]):.2f}")


if __name__ == "__main__":
    main()
