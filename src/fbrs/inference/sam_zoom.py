"""Zoom-In for the SAM family: from the second click on, encode a crop around the object and decode there.

Why: the decoder's logits are L x L (256) cells over the padded encoder input, so an 854-px-wide DAVIS frame
gets one cell per 3.3 px and its boundaries are interpolated from them; a crop around the object gets more
cells per object pixel, and the encoder sees the object larger. The price is one more encoder run (about
1.3 s CPU) whenever the crop changes, so the crop is kept while it still fits (`next_roi`).

A `SamFrame` is where the decoder works: the embedding of the whole image or of a crop at a known offset.
Clicks, the fed-back low-res logits and the output map move between frames here, and only here:
- clicks (y, x) in image pixels -> (row, column) in the frame's low-res grid (`clicks_in_frame`);
- low-res logits of one frame -> another's, by sampling the same image points (`resample_low_res`);
- the frame's low-res logits -> (H, W) probabilities of the whole image, zero outside the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.inference.bbox import Box, bbox_iou, clicks_inside_roi, object_roi
from fbrs.inference.clicks import Click
from fbrs.models.sam.frame import from_low_res, to_low_res, upscale_logits
from fbrs.models.sam.image_encoder import ImageEmbedding

#: `SamZoomConfig.agreement_checks`: the crop clicks whose answer is checked against the whole image's.
AGREEMENT_CHECKS = ("every", "new_crop", "until_agreed")


@dataclass(frozen=True)
class SamZoomConfig:
    """skip_clicks: decode on the whole image for the first this many clicks. expansion_ratio, min_crop_size:
    the crop is the bounding box of the previous mask plus the positive clicks, grown by the ratio, at least
    min_crop_size px a side (`fbrs.inference.bbox.object_roi`, as the DeepLab Zoom-In). recompute_iou: keep
    the crop while every positive click is inside it and the new box overlaps it by at least this box IoU.
    min_gain: zoom only when the crop's longer side is at most the image's / min_gain (else the whole image:
    a re-encode that magnifies little is not worth 1.3 s). prob_threshold: the previous mask's threshold.
    agreement: in a crop the decoder also answers on the whole image (decoder only: that embedding is cached),
    and the crop's answer is kept only where its mask overlaps that answer by at least this IoU; else the
    whole-image answer, moved into the crop, is returned (None: always the crop's; the crop's first answers
    are where Zoom-In collapsed masks on held-out objects). agreement_checks: at which crop clicks that check
    runs: "every" (every click decoded in a crop), "new_crop" (the first click of each crop only) or
    "until_agreed" (in a crop until its answer has agreed once). The check is a second
    transformer pass (a third of a refined click on a CPU), so checking fewer clicks is cheaper, but on
    held-out objects the cheaper choices each added a collapse (sam_zoom.md, fifth round). Defaults:
    the DeepLab Zoom-In's crop rule, which did not pay on held-out training objects; `SAM-zoom` and the
    default mode use the settings that did, `fbrs.inference.sam_modes.SAM_ZOOM` (benchmarks/sam_options.py
    --zooms; benchmarks/results/sam_zoom.md)."""

    skip_clicks: int = 1
    expansion_ratio: float = 1.4
    min_crop_size: int = 128
    recompute_iou: float = 0.5
    min_gain: float = 1.25
    prob_threshold: float = 0.5
    agreement: float | None = None
    agreement_checks: str = "every"

    def __post_init__(self) -> None:
        if self.skip_clicks < 0 or self.expansion_ratio < 1 or self.min_crop_size < 1 or self.min_gain < 1:
            raise ValueError(f"invalid SamZoomConfig {self}: need skip_clicks >= 0, expansion_ratio >= 1, "
                             "min_crop_size >= 1 and min_gain >= 1")
        if self.agreement is not None and not 0 <= self.agreement <= 1:
            raise ValueError(f"invalid SamZoomConfig {self}: agreement must be None or in [0, 1]")
        if self.agreement_checks not in AGREEMENT_CHECKS:
            raise ValueError(f"invalid SamZoomConfig {self}: agreement_checks must be one of "
                             f"{', '.join(AGREEMENT_CHECKS)}")


@dataclass(frozen=True)
class SamFrame:
    """The decoder's working frame: `embedding` of the whole image (roi None) or of the crop `roi`
    ((rmin, rmax, cmin, cmax), inclusive, image pixels)."""

    embedding: ImageEmbedding
    roi: Box | None = None

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the frame's image in the whole image."""
        return (0, 0) if self.roi is None else (self.roi[0], self.roi[2])

    def contains(self, click: Click) -> bool:
        if self.roi is None:
            return True
        rmin, rmax, cmin, cmax = self.roi
        return rmin <= click.y <= rmax + 1 and cmin <= click.x <= cmax + 1

    def to_low_res(self, y: float, x: float, input_size: int, low_res_size: int) -> tuple[float, float]:
        """Image pixel (y, x) -> (row, column) in this frame's low-res grid."""
        top, left = self.offset
        return to_low_res(y - top, x - left, self.embedding.scale, input_size, low_res_size)

    def from_low_res(self, row: float, column: float, input_size: int, low_res_size: int) -> tuple[float, float]:
        """The inverse of `to_low_res`: low-res (row, column) -> image pixel (y, x)."""
        top, left = self.offset
        y, x = from_low_res(row, column, self.embedding.scale, input_size, low_res_size)
        return y + top, x + left


def clicks_in_frame(frame: SamFrame, clicks: Sequence[Click], input_size: int, low_res_size: int) -> list[Click]:
    """Clicks (y, x) in image pixels -> the decoder's clicks in the frame's low-res grid, oldest first.

    Negative clicks outside a crop are left out: the map is zero there anyway, and the prompt encoder was
    never trained on points outside its input. Positive clicks are always inside (`next_roi` keeps them in)."""
    return [
        click.moved(*frame.to_low_res(click.y, click.x, input_size, low_res_size))
        for click in clicks
        if click.is_positive or frame.contains(click)
    ]


def resample_low_res(
    low_res: torch.Tensor, source: SamFrame, target: SamFrame, input_size: int, low_res_size: int
) -> torch.Tensor:
    """(1, 1, L, L) low-res logits in `source`'s frame -> the same map in `target`'s frame (bilinear, the
    border value beyond the source's grid), so that the mask fed back after a change of crop is the mask
    the user saw."""
    if source.roi == target.roi and source.embedding is target.embedding:
        return low_res
    cells = torch.arange(low_res_size, dtype=torch.float64)
    # Rows and columns are independent: the image points of the target's cell rows and columns, then their
    # places in the source's grid.
    ys, xs = target.from_low_res(cells, cells, input_size, low_res_size)
    rows, columns = source.to_low_res(ys, xs, input_size, low_res_size)
    # grid_sample's normalised coordinates (align_corners=False): index i sits at (2 i + 1) / L - 1.
    size = low_res.shape[-1]
    grid_y = ((2 * rows + 1) / size - 1).to(low_res.dtype)
    grid_x = ((2 * columns + 1) / size - 1).to(low_res.dtype)
    grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)[None]
    return F.grid_sample(low_res, grid, mode="bilinear", padding_mode="border", align_corners=False)


def frame_probabilities(
    frame: SamFrame, low_res: torch.Tensor, image_size: tuple[int, int], input_size: int
) -> np.ndarray:
    """The frame's (1, 1, L, L) low-res logits -> (H, W) float32 probabilities of the whole image (SAM's
    mask postprocessing inside the frame; zero outside a crop)."""
    embedding = frame.embedding
    with torch.no_grad():
        logits = upscale_logits(low_res, embedding.resized_size, embedding.image_size, input_size)
        inside = torch.sigmoid(logits)[0, 0].cpu().numpy().astype(np.float32, copy=False)
    if frame.roi is None:
        return inside
    probabilities = np.zeros(image_size, dtype=np.float32)
    top, left = frame.offset
    probabilities[top : top + inside.shape[0], left : left + inside.shape[1]] = inside
    return probabilities


def next_roi(
    config: SamZoomConfig, previous: np.ndarray | None, clicks: Sequence[Click], current: Box | None
) -> Box | None:
    """The crop to decode the clicks in (None: the whole image).

    previous: (H, W) probabilities after all clicks but the last (None before the first click); clicks in
    image pixels, the new one last; current: the crop the last click was decoded in."""
    if len(clicks) <= config.skip_clicks or previous is None:
        return None
    mask = previous > config.prob_threshold
    if not mask.any():
        return None
    candidate = object_roi(mask, clicks, config.expansion_ratio, config.min_crop_size)
    still_fits = current is not None and clicks_inside_roi(current, clicks)
    if still_fits and bbox_iou(candidate, current) >= config.recompute_iou:
        return current
    height, width = mask.shape
    crop_side = max(candidate[1] - candidate[0] + 1, candidate[3] - candidate[2] + 1)
    if max(height, width) < config.min_gain * crop_side:
        return None
    return candidate


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; 1 for two empty ones."""
    union = int(np.count_nonzero(first | second))
    return float(np.count_nonzero(first & second)) / union if union else 1.0


def crop_of(image: np.ndarray, roi: Box) -> np.ndarray:
    """(H, W, 3) image -> its inclusive crop `roi`, contiguous (the encoder's input)."""
    rmin, rmax, cmin, cmax = roi
    return np.ascontiguousarray(image[rmin : rmax + 1, cmin : cmax + 1])
