"""Bounded load test of the annotation app on loopback: N concurrent users x M clicks (issue 16).

    .venv/bin/python benchmarks/load_test.py --users 20 50 --clicks 5 --out benchmarks/results/load_test.json

Starts `fbrs app` (the real command: its default backend, limits and model; --model to choose) as a separate
process on 127.0.0.1 over a temporary folder holding one copy of a sample image per user, then runs each
user in a thread with its own HTTP connection: open its image's session, M clicks inside the image (the
first on the middle, the others around it, alternately positive and negative), finish the object, fetch
the mask as RLE. Reports per request kind and overall p50 / p95 / max latency, the number of errors (any
non-2xx answer or transport error: it must be 0), the server's peak RSS (VmHWM) and its session
counters (evictions and rebuilds), and writes everything to --out. Every loop is bounded (users x clicks
requests, a timeout per request, a deadline for the run); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "fbrs" / "data" / "samples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50_ms": round(percentile(values, 0.5), 1),
            "p95_ms": round(percentile(values, 0.95), 1), "max_ms": round(max(values, default=float("nan")), 1),
            "mean_ms": round(statistics.fmean(values), 1) if values else float("nan")}


def run_user(base_url: str, image_name: str, width: int, height: int, clicks: int, timeout: float,
             record: list, errors: list) -> None:
    def timed(kind: str, method: str, path: str, **options):
        started = time.perf_counter()
        try:
            response = http.request(method, path, **options)
        except httpx.HTTPError as error:
            errors.append(f"{kind} {path}: {type(error).__name__}: {error}")
            return None
        record.append((kind, (time.perf_counter() - started) * 1000.0))
        if response.status_code >= 300:
            errors.append(f"{kind} {path}: {response.status_code} {response.text[:200]}")
            return None
        return response

    with httpx.Client(base_url=base_url, timeout=timeout) as http:
        response = timed("open", "POST", f"/api/images/{image_name}/session")
        if response is None:
            return
        session = response.json()["session_id"]
        for index in range(clicks):
            offset = (index + 1) // 2 * 12
            x = min(width - 1, max(0, width // 2 + (offset if index % 2 else -offset)))
            y = min(height - 1, max(0, height // 2 + offset // 2))
            timed("click", "POST", f"/api/sessions/{session}/clicks", json={"x": x, "y": y, "positive": index % 2 == 0})
        timed("finish", "POST", f"/api/sessions/{session}/finish")
        timed("mask", "GET", f"/api/sessions/{session}/mask", params={"object": "all", "format": "rle"})


def run_round(users: int, clicks: int, model: str | None, timeout: float, deadline: float) -> dict:
    from PIL import Image

    scratch = Path(tempfile.mkdtemp(prefix="fbrs-load-"))
    try:
        images = scratch / "images"
        images.mkdir()
        samples = sorted(SAMPLES.glob("*.jpg"))
        names = []
        for index in range(users):
            source = samples[index % len(samples)]
            name = f"user{index:03d}_{source.name}"
            shutil.copy(source, images / name)
            with Image.open(source) as picture:
                names.append((name, picture.width, picture.height))
        port = free_port()
        command = [sys.executable, "-m", "fbrs.cli", "app", str(images), "--out", str(scratch / "out"),
                   "--port", str(port)]
        if model:
            command += ["--model", model]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base_url = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"fbrs app exited: {server.stdout.read()}")
                if time.monotonic() - started > 180:
                    raise RuntimeError("fbrs app did not answer within 180 s")
                try:
                    info = httpx.get(f"{base_url}/api/info", timeout=5).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.3)
            _, idle_peak = peak_rss_mib(server.pid)
            record: list[tuple[str, float]] = []
            errors: list[str] = []
            peak = [idle_peak]
            done = threading.Event()

            def watch_memory():
                while not done.wait(0.2):
                    peak[0] = max(peak[0], peak_rss_mib(server.pid)[1])

            watcher = threading.Thread(target=watch_memory, daemon=True)
            watcher.start()
            threads = [threading.Thread(target=run_user, args=(base_url, name, width, height, clicks, timeout,
                                                               record, errors), daemon=True)
                       for name, width, height in names]
            wall = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, deadline - (time.perf_counter() - wall)))
            unfinished = sum(thread.is_alive() for thread in threads)
            wall = time.perf_counter() - wall
            after = httpx.get(f"{base_url}/api/info", timeout=30).json()
            done.set()
            current, hwm = peak_rss_mib(server.pid)
        finally:
            server.terminate()
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        by_kind = {kind: summary([ms for name, ms in record if name == kind])
                   for kind in ("open", "click", "finish", "mask")}
        return {
            "users": users, "clicks_per_user": clicks, "requests": len(record), "errors": len(errors),
            "error_samples": errors[:10], "unfinished_users": unfinished, "wall_s": round(wall, 1),
            "all": summary([ms for _, ms in record]), **{kind: value for kind, value in by_kind.items()},
            "server_rss_mib": {"idle_peak": round(idle_peak), "peak": round(max(peak[0], hwm)),
                               "after": round(current)},
            "sessions": after.get("sessions"), "backend": info.get("backend"), "model": info.get("model"),
            "limits": info.get("limits"),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--model", default=None, help="model file (default: the app's default model)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=1200.0, help="seconds per round")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "load_test.json"))
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}, "rounds": []}
    for users in args.users:
        result = run_round(users, args.clicks, args.model, args.timeout, args.deadline)
        results["rounds"].append(result)
        print(json.dumps({key: result[key] for key in ("users", "clicks_per_user", "requests", "errors", "wall_s",
                                                        "all", "click", "server_rss_mib", "sessions")}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
