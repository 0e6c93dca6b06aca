"""The app's own latency log, driven like a user: open an image, wait until it is prepared, click, move on.

    nice -n 15 python benchmarks/app_latency.py --images 4 --clicks 5 --threads 1 \
        --out benchmarks/results/app_latency.json

For each variant (mode, with or without the background prefetch of the next image) a fresh app (in-process,
the real server code through FastAPI's TestClient; no port) serves a folder of held-out training images
(benchmarks/sam_options.training_samples, written losslessly); for each image the script opens its session,
calls POST /prepare (what the UI does; "preparing image" meanwhile), lets the robot place `--clicks` clicks
against the ground truth, then waits for the prefetcher to go idle (a user who takes longer over an image
than the encoder does; the clicks themselves ran while the prefetch was encoding). It reports the app's
latency log (GET /api/info `latency`) and each image's `prepare_ms`: image 1 is always cold, later ones are
prefetched when the prefetch is on. The SAM family's embedding cache is emptied before each variant.
Variants run round-robin over `--rounds`; the machine is shared, so the numbers are upper bounds. `--small`
takes COCO's small held-out objects instead, where `SAM-zoom` re-encodes a crop at some clicks.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fbrs.app.engine import PredictionEngine  # noqa: E402
from fbrs.app.project import AnnotationProject  # noqa: E402
from fbrs.app.server import create_app  # noqa: E402
from fbrs.evaluation.robot import ClickRobot  # noqa: E402
from fbrs.models import load_default_model  # noqa: E402
from fbrs.models.sam.model import load_default_sam_model  # noqa: E402


def write_folder(samples, folder: Path) -> dict[str, np.ndarray]:
    """The samples as PNG files; -> {file name: ground-truth mask}."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for index, sample in enumerate(samples):
        name = f"{index:02d}_{sample.name.replace('/', '_')}.png"
        Image.fromarray(sample.image).save(folder / name)
        truths[name] = sample.mask
    return truths


def run_variant(mode: str, prefetch: bool, truths: dict[str, np.ndarray], folder: Path, clicks: int,
                deeplab) -> dict:
    from fastapi.testclient import TestClient

    load_default_sam_model().clear_cache()
    engine = PredictionEngine(deeplab, model_name="default", default_mode=mode)
    with tempfile.TemporaryDirectory() as out, TestClient(
        create_app(engine, AnnotationProject(folder, Path(out))), base_url="http://127.0.0.1"
    ) as client:
        context = client.app.state.context
        if not prefetch:
            context.prefetcher.close()
            context.prefetcher = None
        images = []
        for name in sorted(truths):
            session = client.post(f"/api/images/{name}/session").json()
            started = time.perf_counter()
            state = client.post(f"/api/sessions/{session['session_id']}/prepare").json()
            ready_round_trip = time.perf_counter() - started
            robot = ClickRobot(truths[name])
            prediction = np.zeros(truths[name].shape, bool)
            latencies = []
            for _ in range(clicks):
                click = robot.next_click(prediction)
                state = client.post(f"/api/sessions/{session['session_id']}/clicks",
                                    json={"x": click.x, "y": click.y, "positive": click.is_positive}).json()
                latencies.append(state["latency_ms"])
                png = client.get(f"/api/sessions/{session['session_id']}/mask").content
                prediction = np.asarray(Image.open(io.BytesIO(png))) > 0
            images.append({"image": name, "prepare_ms": state["prepare_ms"],
                           "ready_round_trip_ms": round(ready_round_trip * 1000, 1), "click_ms": latencies})
            if context.prefetcher is not None:
                context.prefetcher.wait_idle(timeout=300)
        log = client.get("/api/info").json()["latency"]
    return {"mode": mode, "prefetch": prefetch, "images": images, "log": log, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="training images (one per set, in turn)")
    parser.add_argument("--small", action="store_true",
                        help="COCO's small objects instead (sam_options.training_samples): where SAM-zoom crops")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="SAM,SAM-f-BRS-upscaled,f-BRS-B")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/app_latency.json"))
    args = parser.parse_args()
    from sam_options import training_samples

    torch.set_num_threads(args.threads)  # before the SAM model loads: its encoder session takes this count
    if args.small:
        samples = training_samples(per_set=args.images, sets=("coco_train2017", "coco_train2017_extra"),
                                   small=True)[: args.images]
    else:
        samples = training_samples(per_set=1)[: args.images]
    deeplab = load_default_model()
    variants = []
    for mode in args.modes.split(","):
        variants.append((mode, True))
        if mode == "SAM":
            variants.append((mode, False))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "images"
        truths = write_folder(samples, folder)
        runs = []
        for round_index in range(args.rounds):
            for mode, prefetch in variants:
                run = run_variant(mode, prefetch, truths, folder, args.clicks, deeplab)
                run["round"] = round_index
                runs.append(run)
                later = [p["prepare_ms"] for p in run["images"][1:]]
                clicks = [c for p in run["images"] for c in p["click_ms"][1:]]
                print(f"round {round_index} {mode:20s} prefetch {'on ' if prefetch else 'off'} first image "
                      f"{run['images'][0]['prepare_ms']:.0f} ms, later images median {statistics.median(later):.0f} ms,"
                      f" clicks 2.. median {statistics.median(clicks):.0f} ms, max {max(clicks):.0f} ms"
                      f" (load {run['load']:.1f})", flush=True)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": args.threads, "clicks": args.clicks,
              "images": [sample.name for sample in samples], "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
