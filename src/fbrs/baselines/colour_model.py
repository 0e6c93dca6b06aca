"""Colour models estimated from seed pixels: smoothed 3-D RGB histograms.

A disk seed holds ~80 pixels, far too few for a raw 16^3-bin histogram, so the histogram is blurred
in colour space (a kernel density estimate on the bin grid) and mixed with a uniform floor, so that
colours never seen in the seeds keep a finite cost.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

BINS_PER_CHANNEL = 16  # 16 levels per bin
SMOOTHING_BINS = 1.0  # Gaussian sigma of the colour-space blur, in bins
UNIFORM_WEIGHT = 0.01  # mixing weight of the uniform floor


def colour_bins(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 index of each pixel's histogram bin in [0, 16^3)."""
    quantised = image.astype(np.int64) * BINS_PER_CHANNEL // 256
    return (quantised[..., 0] * BINS_PER_CHANNEL + quantised[..., 1]) * BINS_PER_CHANNEL + quantised[..., 2]


def bin_probabilities(bins: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Smoothed colour distribution of the pixels where `samples` (H, W) bool is True.

    bins: (H, W) int64 from colour_bins. Returns (16^3,) float64 bin probabilities summing to 1;
    uniform when there are no samples.
    """
    count = BINS_PER_CHANNEL**3
    histogram = np.bincount(bins[samples], minlength=count).astype(np.float64)
    if histogram.sum() == 0:
        return np.full(count, 1.0 / count)
    cube = gaussian_filter(histogram.reshape((BINS_PER_CHANNEL,) * 3), SMOOTHING_BINS, mode="constant")
    probabilities = cube.ravel() / cube.sum()
    return (1.0 - UNIFORM_WEIGHT) * probabilities + UNIFORM_WEIGHT / count


def negative_log_likelihood(bins: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(H, W) float64: -log P(colour | model estimated from the `samples` pixels), per pixel."""
    return -np.log(bin_probabilities(bins, samples))[bins]
