"""The app's latency log: how long images took to get ready and clicks to answer, per mode, server side.

Every session records into its engine's log: "prepare" (a predictor built and its image set: for the SAM
family the image encoder, unless the embedding was cached or prefetched) and "click" (one prediction,
the same time as the session state's `latency_ms`). `GET /api/info` reports the summary under
`latency`; `benchmarks/app_latency.py` drives the app and reads it. Bounded: the last `capacity` entries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("prepare", "click")


@dataclass(frozen=True)
class LatencyEntry:
    kind: str  # one of KINDS
    mode: str
    milliseconds: float
    at: float  # time.time() when it was recorded


class LatencyLog:
    """Thread-safe ring buffer of LatencyEntry (sessions record from the server's worker threads)."""

    def __init__(self, capacity: int = 2000) -> None:
        self._entries: deque[LatencyEntry] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, kind: str, mode: str, milliseconds: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"latency kind must be one of {KINDS}, got {kind!r}")
        with self._lock:
            self._entries.append(LatencyEntry(kind, mode, float(milliseconds), time.time()))

    def entries(self) -> list[LatencyEntry]:
        with self._lock:
            return list(self._entries)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{mode: {kind: {"count", "median_ms", "p95_ms", "max_ms"}}} over the kept entries."""
        grouped: dict[str, dict[str, list[float]]] = {}
        for entry in self.entries():
            grouped.setdefault(entry.mode, {}).setdefault(entry.kind, []).append(entry.milliseconds)
        return {
            mode: {
                kind: {
                    "count": len(values),
                    "median_ms": round(float(np.median(values)), 1),
                    "p95_ms": round(float(np.percentile(values, 95)), 1),
                    "max_ms": round(max(values), 1),
                }
                for kind, values in kinds.items()
            }
            for mode, kinds in grouped.items()
        }
