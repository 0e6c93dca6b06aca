"""How far our replay of the original code's goldens lands from them across CPU kernels and threads.

The goldens (../shared/reference) were made on an AMD CPU (AVX2), one thread. On another CPU oneDNN
picks other convolution kernels (AVX-512, AMX), which round differently, and L-BFGS amplifies that. This
script runs every golden quantity under ONEDNN_MAX_CPU_ISA = SSE41, AVX2, AVX512_CORE and the machine's
default, with 1 and 2 threads (one subprocess each: oneDNN reads the variable once), and records per
quantity its largest departure from the golden. The golden tests' tolerances are derived from this table
(tests/test_reference_predictors.py, tests/test_evaluation_golden.py say how).

    .venv/bin/python benchmarks/golden_spread.py    # all configurations -> benchmarks/results/golden_spread.{json,md}
    .venv/bin/python benchmarks/golden_spread.py --isa AVX2 --threads 1   # one configuration

Quantities: distance maps, logits (base and calibrated), first-click probabilities, per click of every
mode (free-running and, for f-BRS, started from the golden's state): the first L-BFGS value, the number of
evaluations, max/mean |dp| and mask IoU with the golden; the evaluation protocol's robot clicks and IoUs.
(On these 240x320 goldens the windowed f-BRS gradient falls back to whole maps: windows around four clicks
would cover more than half of the ResNet's maps. benchmarks/windowed_gradient_ab.py compares the two where
the windows are used.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ISAS = ("SSE41", "AVX2", "AVX512_CORE", "default")
THREADS = (1, 2)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(reference: Path, threads: int) -> dict:
    """Every quantity's departure from the golden in this process's configuration."""
    import numpy as np
    import torch
    from tests.golden_replay import FEATURE_MODES, MODES, load_predictor_golden, mask_iou, replay_predictor
    from tests.reference_utils import normalise

    from fbrs.evaluation.datasets import Sample
    from fbrs.evaluation.protocol import evaluate_sample
    from fbrs.inference import create_predictor
    from fbrs.models.distance_maps import distance_maps
    from fbrs.models.reference_weights import build_reference_model

    torch.set_num_threads(threads)
    result: dict = {"onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"), "threads": threads}
    dist = np.load(reference / "dist_maps.npz")
    worst = 0.0
    for key in dist.files:
        if key.endswith("__torch"):
            stem = key[: -len("__torch")]
            points = torch.from_numpy(dist[f"{stem.split('_ss')[0]}__points"])
            expected = dist[key]
            ours = distance_maps(points, expected.shape[2], expected.shape[3],
                                 5.0 if "_nr5" in stem else 260.0, 0.25 if "_ss0.25" in stem else 1.0).numpy()
            worst = max(worst, float(np.abs(ours - expected).max()))
    result["dist_maps_max_abs"] = worst

    models = {variant: build_reference_model(variant) for variant in ("base", "calibrated")}
    net = np.load(reference / "net_outputs.npz")
    logits: dict[str, float] = {"base_rel": 0.0, "calibrated_abs": 0.0}
    for key in net.files:
        if not key.endswith("__points"):
            continue
        case = key[: -len("__points")]
        image = normalise(net[f"{case.split('__')[0]}__image_uint8"])
        points = torch.from_numpy(net[key])
        with torch.no_grad():
            base = models["base"](image, points).numpy()
            calibrated = models["calibrated"](image, points).numpy()
        expected_base = net[f"{case}__logits"]
        base_rel = float(np.abs(base - expected_base).max() / np.abs(expected_base).max())
        logits["base_rel"] = max(logits["base_rel"], base_rel)
        logits["calibrated_abs"] = max(logits["calibrated_abs"],
                                       float(np.abs(calibrated - net[f"{case}__logits_calibrated"]).max()))
    result["logits"] = logits

    golden = load_predictor_golden(reference)
    model = models["calibrated"]
    runs = [(mode, False, None) for mode in MODES] + [(mode, True, None) for mode in FEATURE_MODES]
    predictor_rows = []
    for mode, from_state, windowed in runs:
        options = {} if windowed is None else {"windowed_gradient": windowed}
        start = time.perf_counter()
        replay = replay_predictor(model, golden, mode, from_golden_state=from_state, **options)
        per_click = []
        for index, record in enumerate(replay.clicks):
            expected = golden.probs(mode, index)
            golden_losses = golden.click_meta(mode, index)["lbfgs_fvals"]
            difference = np.abs(record.probs - expected)
            per_click.append({
                "max_abs": float(difference.max()),
                "mean_abs": float(difference.mean()),
                "mask_iou": mask_iou(record.probs, expected),
                "first_loss_rel": (abs(record.loss_values[0] - golden_losses[0]) / abs(golden_losses[0])
                                   if golden_losses and record.loss_values else None),
                "evaluations": len(record.loss_values),
                "golden_evaluations": len(golden_losses),
            })
        predictor_rows.append({"mode": mode, "from_golden_state": from_state,
                               "gradient": "whole-map" if windowed is False else "default",
                               "seconds": round(time.perf_counter() - start, 2), "clicks": per_click})
    result["predictor"] = predictor_rows

    evaluation = np.load(reference / "evaluation.npz")
    protocol_rows = []
    for mode in ("NoBRS", "f-BRS-B"):
        for name in ("astronaut", "coffee"):
            labels = evaluation[f"{name}_gt"]
            sample = Sample(evaluation[f"{name}_image_uint8"], labels == 1, labels == -1, name)
            predictor = create_predictor(mode, model=model, zoom_in=True, zoom_in_target_size=400)
            sample_result = evaluate_sample(predictor, sample, max_clicks=5, target_iou=0.90)
            key = f"{mode}__{name}"
            expected_clicks = [(int(y), int(x), bool(p)) for (y, x), p in
                               zip(evaluation[f"{key}__clicks_yx"], evaluation[f"{key}__clicks_is_positive"],
                                   strict=True)]
            ours = [(c.y, c.x, c.is_positive) for c in sample_result.clicks]
            protocol_rows.append({
                "mode": mode, "sample": name, "clicks": ours, "golden_clicks": expected_clicks,
                "ious": [round(v, 4) for v in sample_result.ious],
                "golden_ious": [round(float(v), 4) for v in evaluation[f"{key}__ious"]],
            })
    result["protocol"] = protocol_rows
    return result


def _run_worker(isa: str, threads: int, reference: Path) -> dict:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--reference", str(reference)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def _table(results: list[dict]) -> str:
    """Markdown: the largest departure from the golden over all configurations, per quantity and click."""
    lines = [f"Machine: {_cpu_name()}; configurations: " + ", ".join(
        f"{r['onednn_isa']}/{r['threads']}t" for r in results), ""]
    lines.append(f"- distance maps max |d|: {max(r['dist_maps_max_abs'] for r in results):.1e}")
    lines.append(f"- base logits max |d| / max |logit|: {max(r['logits']['base_rel'] for r in results):.1e}; "
                 f"calibrated logits max |d|: {max(r['logits']['calibrated_abs'] for r in results):.1e}")
    lines += ["", "| mode | start of each click | gradient | click | max |dp| | mean |dp| | min mask IoU | "
              "first L-BFGS value rel. | evaluations (golden) |", "|---|---|---|---|---|---|---|---|---|"]
    for row_index, row in enumerate(results[0]["predictor"]):
        for click in range(len(row["clicks"])):
            values = [r["predictor"][row_index]["clicks"][click] for r in results]
            first = [v["first_loss_rel"] for v in values if v["first_loss_rel"] is not None]
            evaluations = ",".join(map(str, sorted({v["evaluations"] for v in values})))
            start = "golden state" if row["from_golden_state"] else "own state"
            lines.append(
                f"| {row['mode']} | {start} | {row['gradient']} | {click + 1} "
                f"| {max(v['max_abs'] for v in values):.1e} | {max(v['mean_abs'] for v in values):.1e} "
                f"| {min(v['mask_iou'] for v in values):.4f} | {f'{max(first):.1e}' if first else '-'} "
                f"| {evaluations} ({values[0]['golden_evaluations']}) |"
            )
    lines += ["", "| protocol | sample | configurations whose clicks equal the golden's (first 3 / all) | "
              "IoU per click: golden; min..max over configurations |", "|---|---|---|---|"]
    for row_index, row in enumerate(results[0]["protocol"]):
        values = [r["protocol"][row_index] for r in results]
        golden = [tuple(c) for c in row["golden_clicks"]]
        first3 = sum(all(tuple(a) == b for a, b in zip(v["clicks"][:3], golden[:3], strict=False)) for v in values)
        whole = sum([tuple(c) for c in v["clicks"]] == golden for v in values)
        spread = []
        for click in range(max(len(v["ious"]) for v in values)):
            got = [v["ious"][click] for v in values if click < len(v["ious"])]
            gold = row["golden_ious"][click] if click < len(row["golden_ious"]) else None
            spread.append(f"{gold}; {min(got)}..{max(got)}")
        spread_text = " / ".join(spread)
        lines.append(f"| {row['mode']} | {row['sample']} | {first3} / {whole} of {len(values)} | {spread_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--isa", action="append", help="ONEDNN_MAX_CPU_ISA values (default: all four)")
    parser.add_argument("--threads", type=int, action="append", help="thread counts (default: 1 and 2)")
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "golden_spread")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.reference, args.threads[0])))
        return
    results = []
    for isa in args.isa or ISAS:
        for threads in args.threads or THREADS:
            start = time.perf_counter()
            results.append(_run_worker(isa, threads, args.reference))
            print(f"{isa} {threads} thread(s): {time.perf_counter() - start:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cpu": _cpu_name(), "date": time.strftime("%Y-%m-%d"), "results": results}
    from fbrs.io_utils import write_text_atomic

    write_text_atomic(args.out.with_suffix(".json"), json.dumps(payload, indent=1))
    write_text_atomic(args.out.with_suffix(".md"), _table(results))
    print(_table(results))


if __name__ == "__main__":
    main()
