"""`fbrs bench`: seconds per click of every mode on one model and crop size, measured in one run.

Every mode gets the same image (synthetic, crop_size x crop_size, so Zoom-In is off and the network
sees exactly that size) and the same click sequence (placed once by the robot against NoBRS). Modes are
interleaved round-robin over the repeats so slow drifts of the machine (other jobs, thermal) hit all
modes alike; this is what makes the ratios f-BRS-B / NoBRS and RGB-BRS / f-BRS-B meaningful. The first
click of a sequence is a plain forward pass in every mode, so SPC statistics use clicks 2..N; the first
click is reported separately. Peak memory: on CUDA torch's peak allocation per mode; on CPU the peak
resident set of a fresh process that loads the model and runs one sequence of that mode.

Any registered mode can be timed (`--modes SAM,SAM-f-BRS-upscaled,f-BRS-B`): the SAM family uses its
bundled model and the same click sequence; "new image" times set_image on an image not seen before,
which for the SAM family is the image encoder (once per image, then cached).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import ConfigError
from fbrs.evaluation.predictors import PredictorRecipe, check_modes, load_model_for_evaluation
from fbrs.evaluation.robot import ClickRobot
from fbrs.inference.clicks import Click
from fbrs.inference.modes import PAPER_MODES
from fbrs.io_utils import write_text_atomic


@dataclass
class BenchSettings:
    """model: checkpoint path, architecture name (random weights) or None (bundled). modes None = the six
    learned modes. clicks: clicks per sequence; repeats: timed sequences per mode (after one warm-up).
    backend: "torch", "onnx" or "auto" (fbrs.onnx.policy.backend_for_mode: modes ONNX Runtime cannot
    run use torch; the table says which backend each mode used)."""

    model: str | None = None
    modes: list[str] | None = None
    crop_size: int = 400
    clicks: int = 10
    repeats: int = 3
    device: str = "cpu"
    threads: int | None = None
    with_flip: bool = True
    measure_memory: bool = True
    backend: str = "torch"

    def validate(self) -> None:
        if self.crop_size < 32:
            raise ConfigError(f"--crop-size must be >= 32, got {self.crop_size}")
        if self.clicks < 2:
            raise ConfigError(f"--clicks must be >= 2 (BRS starts at the second click), got {self.clicks}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        from fbrs.onnx.policy import check_backend_choice

        check_backend_choice(self.backend, self.device)

    @property
    def predictor_recipe(self) -> PredictorRecipe:
        """The predictors timed: Zoom-In off (the network sees the crop_size image), flip as set."""
        return PredictorRecipe(
            options={"with_flip": self.with_flip}, zoom_in=False, backend=self.backend, device=self.device
        )


def synthetic_scene(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (size, size, 3) uint8 image with a textured object and its (size, size) bool mask:
    an ellipse with a notch, so the robot needs positive and negative clicks."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    mask = ((rows - 0.5) / 0.32) ** 2 + ((cols - 0.45) / 0.25) ** 2 < 1.0
    mask &= ~((np.abs(rows - 0.5) < 0.06) & (cols > 0.5))
    rng = np.random.default_rng(1234)
    background = (
        90 + 40 * np.sin(9 * rows)[..., None] * np.cos(7 * cols)[..., None] + rng.normal(0, 12, (size, size, 3))
    )
    foreground = np.array([200, 120, 60], np.float32) + rng.normal(0, 18, (size, size, 3))
    image = np.where(mask[..., None], foreground, background)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _backend(mode: str, settings: BenchSettings) -> str:
    return settings.predictor_recipe.backend_for(mode)


def _make_predictor(mode: str, model: Any, settings: BenchSettings) -> Any:
    """A predictor of any registered mode, built as `fbrs evaluate` builds its own (PredictorRecipe):
    DeepLab modes get Zoom-In off, the flip setting and the backend; the SAM family (its own bundled model)
    only the options it takes."""
    return settings.predictor_recipe.build(mode, model)


def _forget_image(predictor: Any) -> None:
    """Empty the SAM family's embedding cache, so that the next set_image runs the image encoder (what a new
    image costs); DeepLab predictors and baselines have nothing to forget."""
    clear = getattr(getattr(predictor, "model", None), "clear_cache", None)
    if callable(clear):
        clear()


def robot_click_sequence(
    model: Any, image: np.ndarray, mask: np.ndarray, clicks: int, with_flip: bool = True
) -> list[Click]:
    """The robot's `clicks` clicks on `image` ((H, W, 3) uint8) against NoBRS without Zoom-In: the fixed
    click sequence that every benchmark times, so that all modes and variants see the same clicks."""
    predictor = _make_predictor("NoBRS", model, BenchSettings(with_flip=with_flip))  # torch: the reference
    predictor.set_image(image)
    robot = ClickRobot(mask)
    prediction = np.zeros_like(mask)
    for _ in range(clicks):
        click = robot.next_click(prediction)
        prediction = predictor.add_click(click.y, click.x, click.is_positive) > 0.49
    return list(robot.clicks)


def _timed_sequence(
    predictor: Any, image: np.ndarray, clicks: list[Click], synchronize
) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each click of one sequence (set_image not included, see
    _timed_set_image)."""
    predictor.set_image(image)
    times, cpu_times = [], []
    for click in clicks:
        start, cpu_start = time.perf_counter(), time.process_time()
        predictor.add_click(click.y, click.x, click.is_positive)
        synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def _timed_set_image(predictor: Any, image: np.ndarray, synchronize) -> tuple[float, float]:
    """(wall, process CPU) seconds of set_image on an image the predictor has not seen (the SAM family's
    encoder included)."""
    _forget_image(predictor)
    start, cpu_start = time.perf_counter(), time.process_time()
    predictor.set_image(image)
    synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def process_peak_rss() -> int:
    """Peak resident set of this process in bytes, counted from its last exec.

    On Linux the VmHWM of /proc/self/status: getrusage's ru_maxrss would not do for a spawned worker, since
    Linux carries the parent's resident set at fork time over into the child's maxrss (a bench that had
    exported ONNX files read 2.7 GB for every mode). Elsewhere ru_maxrss (KiB on Linux/BSD, bytes on macOS)."""
    import resource
    import sys

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _peak_memory_worker(mode: str, settings_dict: dict, clicks: list[tuple], queue: Any) -> None:
    """Runs in a fresh process: its peak RSS (bytes) after loading the model and one click sequence of `mode`.

    The absolute peak, not its growth over the sequence: the growth reads 0 whenever loading peaked higher."""
    import torch

    settings = BenchSettings(**settings_dict)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, _ = load_model_for_evaluation(settings.model)
    image, _ = synthetic_scene(settings.crop_size)
    _timed_sequence(_make_predictor(mode, model, settings), image, [Click(*c) for c in clicks], lambda: None)
    queue.put(process_peak_rss())


def _cpu_peak_memory(settings: BenchSettings, mode: str, clicks: list[Click]) -> int | None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    arguments = (mode, asdict(settings), [(c.y, c.x, c.is_positive) for c in clicks], queue)
    process = context.Process(target=_peak_memory_worker, args=arguments)
    process.start()
    try:
        value = queue.get(timeout=600)
    except Exception:  # noqa: BLE001 - a failed measurement is reported as missing, not fatal
        value = None
    process.join(timeout=30)
    return value


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_benchmark(settings: BenchSettings, out_path: str | os.PathLike) -> dict[str, Any]:
    """Measure, then write `out_path` (Markdown) and the same stem .json. Returns the JSON content."""
    import torch

    settings.validate()
    modes = list(settings.modes or PAPER_MODES)
    check_modes(modes)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device")
    model, model_description = load_model_for_evaluation(settings.model, settings.device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    onnx_modes = [mode for mode in modes if _backend(mode, settings) == "onnx"]
    if onnx_modes:  # export before timing anything (once per model, then cached)
        from fbrs.onnx import export_for_modes

        export_for_modes(model, onnx_modes, notify=lambda message: print(message, flush=True))

    image, mask = synthetic_scene(settings.crop_size)
    clicks = robot_click_sequence(model, image, mask, settings.clicks, settings.with_flip)
    times: dict[str, list[list[float]]] = {mode: [] for mode in modes}
    cpu_times: dict[str, list[list[float]]] = {mode: [] for mode in modes}
    image_times: dict[str, list[float]] = {mode: [] for mode in modes}
    image_cpu_times: dict[str, list[float]] = {mode: [] for mode in modes}
    peak_cuda: dict[str, int] = {}
    for repeat in range(settings.repeats + 1):  # round 0 = warm-up, not recorded
        for mode in modes:
            predictor = _make_predictor(mode, model, settings)
            image_seconds, image_cpu_seconds = _timed_set_image(predictor, image, synchronize)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sequence, cpu_sequence = _timed_sequence(predictor, image, clicks, synchronize)
            if device.type == "cuda":
                peak_cuda[mode] = max(peak_cuda.get(mode, 0), int(torch.cuda.max_memory_allocated(device)))
            if repeat > 0:
                times[mode].append(sequence)
                cpu_times[mode].append(cpu_sequence)
                image_times[mode].append(image_seconds)
                image_cpu_times[mode].append(image_cpu_seconds)

    rows = {}
    for mode in modes:
        later = [t for sequence in times[mode] for t in sequence[1:]]
        first = [sequence[0] for sequence in times[mode]]
        if device.type == "cuda":
            peak = peak_cuda.get(mode)
        elif settings.measure_memory:
            peak = _cpu_peak_memory(settings, mode, clicks)
        else:
            peak = None
        rows[mode] = {
            "median_spc": float(np.median(later)),
            "p95_spc": _percentile(later, 95),
            "mean_spc": float(np.mean(later)),
            "first_click_median": float(np.median(first)),
            "set_image_median": float(np.median(image_times[mode])),
            # Process CPU seconds (all threads): on a loaded machine the wall time is an upper bound, and
            # with one thread the CPU time is close to what an idle machine would take.
            "median_cpu_spc": float(np.median([t for sequence in cpu_times[mode] for t in sequence[1:]])),
            "set_image_cpu_median": float(np.median(image_cpu_times[mode])),
            "timed_clicks": len(later),
            "peak_memory_bytes": peak,
            "backend": _backend(mode, settings),
        }

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator in rows and denominator in rows:
            return rows[numerator]["median_spc"] / rows[denominator]["median_spc"]
        return None

    result = {
        "model": model_description,
        "settings": asdict(settings),
        "modes": modes,
        "click_sequence": [[c.y, c.x, int(c.is_positive)] for c in clicks],
        "results": rows,
        "ratios": {
            "f-BRS-B / NoBRS": ratio("f-BRS-B", "NoBRS"),
            "RGB-BRS / f-BRS-B": ratio("RGB-BRS", "f-BRS-B"),
        },
        "environment": {
            "torch": torch.__version__,
            "device": _device_name(device),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_path = Path(out_path)
    json_path = out_path.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(result, indent=1) + "\n")
    write_text_atomic(out_path, render_benchmark_markdown(result))
    result["json_path"] = str(json_path)
    return result


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}"


def render_benchmark_markdown(result: dict[str, Any]) -> str:
    from fbrs.evaluation.reports import _model_label, _table

    settings = result["settings"]
    baseline = result["results"].get("NoBRS", {}).get("median_spc")
    header = ["Mode", "median SPC, s", "p95 SPC, s", "mean SPC, s", "1st click, s", "new image, s",
              "CPU s / click", "new image CPU, s", "x NoBRS", "peak memory, MiB"]
    # Results written before the backend option existed ran everything in torch.
    backends = {result["results"][mode].get("backend", "torch") for mode in result["modes"]}
    with_backend = backends != {"torch"}
    if with_backend:
        header.insert(1, "backend")
    rows = []
    for mode in result["modes"]:
        entry = result["results"][mode]
        peak = entry["peak_memory_bytes"]
        rows.append(
            [
                mode,
                *([entry.get("backend", "torch")] if with_backend else []),
                f"{entry['median_spc']:.4f}",
                f"{entry['p95_spc']:.4f}",
                f"{entry['mean_spc']:.4f}",
                f"{entry['first_click_median']:.4f}",
                # Results written before this column existed: "-".
                f"{entry['set_image_median']:.4f}" if "set_image_median" in entry else "-",
                f"{entry['median_cpu_spc']:.4f}" if "median_cpu_spc" in entry else "-",
                f"{entry['set_image_cpu_median']:.4f}" if "set_image_cpu_median" in entry else "-",
                f"{entry['median_spc'] / baseline:.2f}" if baseline else "-",
                f"{peak / 2**20:.0f}" if peak is not None else "-",
            ]
        )
    ratios = [f"**{name}** = {value:.2f}" for name, value in result["ratios"].items() if value is not None]
    environment = result["environment"]
    return "\n".join(
        [
            "# fbrs speed benchmark",
            "",
            f"Model: {_model_label(result['model'])}. Image {settings['crop_size']}x{settings['crop_size']} "
            f"(Zoom-In off), flip {'on' if settings['with_flip'] else 'off'}, {settings['clicks']} robot clicks "
            f"x {settings['repeats']} repeats per mode (after a warm-up), modes interleaved.",
            f"Device: {environment['device']}, torch {environment['torch']}, {environment['threads']} threads. "
            f"{result['date']}.",
            "",
            _table(header, rows),
            "",
            "SPC statistics over clicks 2..N (BRS starts at click 2); new image: set_image on an image not "
            "seen before (the SAM family's image encoder, cache emptied); CPU: median process CPU seconds "
            "(all threads; with 1 thread close to an idle machine's wall time when the machine is loaded); "
            "peak memory: "
            + (
                "CUDA peak allocation."
                if environment["device"] and not environment["device"].startswith("CPU")
                else "peak RSS of a fresh process that loads the model and runs one sequence."
            ),
            "",
            "Ratios of median SPC, measured in this run: " + (", ".join(ratios) if ratios else "-") + ".",
            "",
        ]
    )
