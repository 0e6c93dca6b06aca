"""Write benchmarks/RESULTS.md from the `fbrs bench` / `onnx_ab.py` outputs in benchmarks/results/.

    .venv/bin/python benchmarks/compose_results.py

Each section is the Markdown a run wrote (its table, settings, date and machine), under a heading saying which
command produced it; a missing file is reported, not skipped silently.
"""

from __future__ import annotations

from pathlib import Path

from fbrs.io_utils import write_text_atomic

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

INTRO = """# fbrs speed benchmark results (issue #7)

Produced with `fbrs bench` (all six modes, 400x400 image, modes interleaved in one run, 1 thread) on the shared
2-core development machine (AMD EPYC, heavy CPU steal, a training job running on the other core). Ratios are
measured in one run; absolute times are a guide only. Peak memory: the peak resident set (VmHWM) of a fresh
process that loads the model and runs one click sequence of the mode (the runs before 2026-11-26 03:00 reported
the parent's size for every mode: a measurement bug, fixed). Analysis and what bounds each target:
`docs/performance.md`. Regenerate this file with `benchmarks/compose_results.py`.

**Which model.** The four "Bundled model" runs (2026-11-26 07:05-07:14) use session 5's GPU-trained bundled
model; the torch-vs-ONNX A/B runs (03:04) and the ResNet-34 run used session 4's CPU-trained model and the
reference weights. Session 4's model gave f-BRS-B / NoBRS 0.99 (torch, flip), 0.91 (torch, no flip), 1.19 (ONNX,
flip), 0.82 (ONNX, no flip) and f-BRS-B 0.109 / 0.154 s median / p95 with ONNX and no flip.

**Read with care.** `fbrs bench` uses one synthetic image with a clear object. The bundled models satisfy the
robot's clicks there within a few L-BFGS evaluations, so f-BRS costs about what NoBRS costs; on real photos with
more evaluations per click f-BRS-B is slower (see the SPC column of the evaluation in the README). The
ResNet-34 run uses the deterministic reference weights of the golden tests (random, calibrated), for which
RGB/DistMap-BRS and f-BRS-A run many evaluations and f-BRS-B/C exit early.
"""

SECTIONS = [
    ("default.md", "Bundled model, torch, flip on", "fbrs bench --threads 1"),
    ("default_noflip.md", "Bundled model, torch, flip off", "fbrs bench --threads 1 --no-flip"),
    ("default_onnx.md", "Bundled model, ONNX Runtime, flip on", "fbrs bench --threads 1 --backend onnx"),
    (
        "default_onnx_noflip.md",
        "Bundled model, ONNX Runtime, flip off (what the app runs)",
        "fbrs bench --threads 1 --backend onnx --no-flip",
    ),
    (
        "onnx_default.md",
        "torch vs ONNX Runtime, interleaved, flip on",
        "python benchmarks/onnx_ab.py --threads 1 --crop-size 400 --clicks 6 --repeats 2",
    ),
    (
        "onnx_default_noflip.md",
        "torch vs ONNX Runtime, interleaved, flip off",
        "python benchmarks/onnx_ab.py --threads 1 --crop-size 400 --clicks 6 --repeats 2 --no-flip",
    ),
    (
        "resnet34_reference.md",
        "ResNet-34 (resnet34_dh128, reference weights), torch, flip on",
        "fbrs bench --model resnet34_reference.safetensors --threads 1 --clicks 4 --repeats 1  # model: "
        "fbrs.save_model(fbrs.models.reference_weights.build_reference_model('calibrated'), ...)",
    ),
]


def body(path: Path) -> str:
    """The run's Markdown without its own top-level title."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    while lines and (lines[0].startswith("# ") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines)


def main() -> None:
    parts = [INTRO]
    for name, title, command in SECTIONS:
        path = RESULTS / name
        parts.append(f"## {title}\n\n`{command}` -> `benchmarks/results/{name}`\n")
        parts.append(body(path) if path.is_file() else f"*(missing: {name} was not produced)*")
    write_text_atomic(HERE / "RESULTS.md", "\n".join(parts) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
