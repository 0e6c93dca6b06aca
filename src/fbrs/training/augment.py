"""Training augmentations: random rescale, a crop that contains the target object, flips, colour jitter.

All functions work on numpy arrays: image (H, W, 3) uint8 RGB, instances (H, W) integer map
(0 = background, k = instance k), ignore (H, W) bool. Geometry is applied to all three alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fbrs.training.config import AugmentConfig


@dataclass(frozen=True)
class Crop:
    """An augmented training crop: image (h, w, 3) uint8, instances (h, w) int32, ignore (h, w) bool
    (True also for padding added when the image was smaller than the crop)."""

    image: np.ndarray
    instances: np.ndarray
    ignore: np.ndarray


def resize_sample(
    image: np.ndarray, instances: np.ndarray, ignore: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescale by `scale` (bilinear for the image, nearest for the label maps)."""
    height, width = instances.shape
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL wants (width, height)
    if new_size == (width, height):
        return image, instances, ignore
    image = np.asarray(Image.fromarray(image).resize(new_size, Image.BILINEAR))
    instances = np.asarray(Image.fromarray(instances.astype(np.int32)).resize(new_size, Image.NEAREST))
    ignore = np.asarray(Image.fromarray(ignore.astype(np.uint8)).resize(new_size, Image.NEAREST)) > 0
    return image, instances, ignore


def crop_around_object(
    image: np.ndarray,
    instances: np.ndarray,
    ignore: np.ndarray,
    object_id: int,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
) -> Crop:
    """Cut a (crop_height, crop_width) window that contains a random pixel of instance `object_id`,
    at a uniformly random position among such windows; pads with ignored zeros where the image is smaller."""
    crop_height, crop_width = crop_size
    height, width = instances.shape
    object_pixels = np.argwhere(instances == object_id)
    if len(object_pixels) == 0:
        raise ValueError(f"instance {object_id} is not present in the instance map")
    anchor_y, anchor_x = object_pixels[rng.integers(len(object_pixels))]

    def window_start(anchor: int, size: int, crop: int) -> int:
        if size <= crop:
            return 0
        low = max(0, anchor - crop + 1)
        high = min(anchor, size - crop)
        return int(rng.integers(low, high + 1))

    top = window_start(int(anchor_y), height, crop_height)
    left = window_start(int(anchor_x), width, crop_width)
    out_image = np.zeros((crop_height, crop_width, 3), dtype=np.uint8)
    out_instances = np.zeros((crop_height, crop_width), dtype=np.int32)
    out_ignore = np.ones((crop_height, crop_width), dtype=bool)
    part_height, part_width = min(crop_height, height), min(crop_width, width)
    rows, cols = slice(top, top + part_height), slice(left, left + part_width)
    out_image[:part_height, :part_width] = image[rows, cols]
    out_instances[:part_height, :part_width] = instances[rows, cols]
    out_ignore[:part_height, :part_width] = ignore[rows, cols]
    return Crop(out_image, out_instances, out_ignore)


def jitter_colours(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    if strength <= 0:
        return image
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    result = image.astype(np.float32) * brightness
    result = (result - result.mean()) * contrast + result.mean()
    grey = result.mean(axis=2, keepdims=True)
    result = (result - grey) * saturation + grey
    return np.clip(result + 0.5, 0, 255).astype(np.uint8)


def augment_sample(
    image: np.ndarray,
    instances: np.ndarray,
    ignore: np.ndarray,
    object_id: int,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> Crop:
    """The full training augmentation: rescale, crop around the object, flips, colour jitter."""
    scale = float(rng.uniform(*config.scale_range))
    scaled = resize_sample(image, instances, ignore, scale)
    # A tiny object can vanish when downscaled with nearest neighbour; keep the original size then.
    if (scaled[1] == object_id).any():
        image, instances, ignore = scaled
    crop = crop_around_object(image, instances, ignore, object_id, config.crop_size, rng)
    image, instances, ignore = crop.image, crop.instances, crop.ignore
    if config.horizontal_flip and rng.random() < 0.5:
        image, instances, ignore = image[:, ::-1], instances[:, ::-1], ignore[:, ::-1]
    if config.vertical_flip and rng.random() < 0.5:
        image, instances, ignore = image[::-1], instances[::-1], ignore[::-1]
    image = jitter_colours(np.ascontiguousarray(image), config.color_jitter, rng)
    return Crop(np.ascontiguousarray(image), np.ascontiguousarray(instances), np.ascontiguousarray(ignore))


def paste_object(
    crop: Crop,
    patch_image: np.ndarray,
    patch_mask: np.ndarray,
    new_id: int,
    target_id: int,
    scale_range: tuple[float, float],
    max_occlusion: float,
    rng: np.random.Generator,
    attempts: int = 4,
) -> Crop:
    """Copy-paste compositing: lay a real object over the crop, as an occluder.

    patch_image (h, w, 3) uint8 and patch_mask (h, w) bool: the object's bounding box cut from another image.
    The patch is rescaled so that its longer side is a random fraction (`scale_range`) of the crop's shorter
    side and put at a random position inside the crop; where its mask is set the crop takes its pixels,
    `instances` becomes `new_id` (so every mask beneath, the target's included, loses what the object covers)
    and `ignore` is cleared (the pasted object is fully labelled). A position that would hide more than
    `max_occlusion` of the target `target_id` is drawn again; after `attempts` the crop is returned unchanged.
    """
    if not patch_mask.any():
        return crop
    height, width = crop.instances.shape
    target = crop.instances == target_id
    target_area = int(target.sum())
    for _ in range(attempts):
        side = float(rng.uniform(*scale_range)) * min(height, width)
        scale = side / max(patch_mask.shape)
        size = (  # PIL's (width, height)
            max(1, min(width, round(patch_mask.shape[1] * scale))),
            max(1, min(height, round(patch_mask.shape[0] * scale))),
        )
        mask = np.asarray(Image.fromarray(patch_mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        if not mask.any():
            continue
        top = int(rng.integers(0, height - size[1] + 1))
        left = int(rng.integers(0, width - size[0] + 1))
        placed = np.zeros((height, width), dtype=bool)
        placed[top : top + size[1], left : left + size[0]] = mask
        if target_area and (target & placed).sum() > max_occlusion * target_area:
            continue
        pixels = np.asarray(Image.fromarray(patch_image).resize(size, Image.BILINEAR))
        image, instances, ignore = crop.image.copy(), crop.instances.copy(), crop.ignore.copy()
        window = (slice(top, top + size[1]), slice(left, left + size[0]))
        image[window][mask] = pixels[mask]
        instances[placed] = new_id
        ignore[placed] = False
        return Crop(image, instances, ignore)
    return crop
