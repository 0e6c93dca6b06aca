"""COCO run-length encoding (RLE) of binary masks, byte-compatible with pycocotools.

Runs are column-major and start with background. The compressed string stores each run (from the fourth
on, as the difference to the run two before) in 5-bit groups offset by 48 into printable ASCII, with
bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def run_lengths(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H, W) bool mask in column-major order, starting with a (maybe empty) 0-run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change_positions = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate([[0], change_positions, [flat.size]])
    runs = np.diff(boundaries).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs


def encode_counts(runs: list[int]) -> str:
    characters: list[str] = []
    for index, run in enumerate(runs):
        value = run - runs[index - 2] if index > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end at -1, not 0
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            characters.append(chr(group + 48))
    return "".join(characters)


def decode_counts(text: str) -> list[int]:
    """Compressed counts string -> run lengths. Raises ValueError when the string is cut short."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("RLE counts string ends in the middle of a number")
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def runs_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """Uncompressed run lengths -> (H, W) bool. Raises ValueError if they do not cover H x W exactly."""
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs do not cover a {height}x{width} mask")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((height, width), order="F")


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a (H, W) bool mask: ``{"size": [H, W], "counts": str}`` (as pycocotools)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": encode_counts(run_lengths(mask))}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string/bytes or uncompressed list counts) -> (H, W) bool; ValueError if malformed."""
    try:
        height, width = (int(value) for value in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("RLE must be a mapping with 'size': [H, W] and 'counts'") from None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = decode_counts(counts) if isinstance(counts, str) else [int(run) for run in counts]
    return runs_to_mask(runs, height, width)
