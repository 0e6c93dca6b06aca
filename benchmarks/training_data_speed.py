"""Per-sample cost of the training data pipeline (read + augment + click sampling + tensors), one process.

    python benchmarks/training_data_speed.py [--pack work/train_pack.zip] [--samples 200]

A/B of the click sampler's windowed distance transforms against whole-crop ones, interleaved in one run
(A, B, A, B, ... blocks) so that the load of a shared machine hits both alike. On a GPU the data loader
workers, not the GPU, set the training speed (docs/training.md), so this is the number that matters there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

import fbrs.training.click_sampler as click_sampler
from fbrs.training.config import load_config
from fbrs.training.data import TrainingData, TrainingDataset


def whole_crop_distance(values, box, margin, fill):
    distances = ndimage.distance_transform_edt(values)
    return np.minimum(distances, fill) if fill > 0 else distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default_mnv2.toml")
    parser.add_argument("--pack", default="work/train_pack.zip")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--block", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f'data.sources=[{{path="{args.pack}", kind="pack"}}]', "augment.crop_size=[320, 480]"]
    config = load_config(args.config, overrides)
    dataset = TrainingDataset(TrainingData(config.data), config, 0)
    windowed = click_sampler._distance_to_zero_in_box
    variants = {"whole-crop EDT": whole_crop_distance, "windowed EDT": windowed}
    times: dict[str, list[float]] = {name: [] for name in variants}
    dataset[0]
    for start in range(0, args.samples, args.block):
        for name, function in variants.items():
            click_sampler._distance_to_zero_in_box = function
            for position in range(start, min(start + args.block, args.samples)):
                begin = time.perf_counter()
                dataset[position]
                times[name].append(time.perf_counter() - begin)
    click_sampler._distance_to_zero_in_box = windowed
    base = statistics.mean(times["whole-crop EDT"])
    for name, values in times.items():
        mean = statistics.mean(values)
        print(f"{name:15s} mean {mean * 1000:6.1f} ms/sample  median {statistics.median(values) * 1000:6.1f} ms  "
              f"x{base / mean:.2f}")


if __name__ == "__main__":
    main()
