"""The readers every outside file goes through: images (size limits, EXIF orientation, 16-bit), atomic
writes (permissions), checkpoints (messages)."""

from __future__ import annotations

import argparse
import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from fbrs.errors import CheckpointError, InvalidImageError


def test_a_pickle_with_objects_is_refused_without_advising_weights_only_false(tmp_path):
    from fbrs.models import load_model

    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)  # an object: refused by weights_only
    with pytest.raises(CheckpointError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "weights_only" not in message and "False" not in message
    assert "never unpickles" in message


# ------------------------------------------------------------------------------------------- images


def encoded(array: np.ndarray, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_load_image_applies_exif_orientation_and_read_image_keeps_the_stored_frame(tmp_path):
    from fbrs.images import image_size, load_image, read_image

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:20] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    path.write_bytes(encoded(stored, "JPEG", exif=exif.tobytes(), quality=95))
    shown = load_image(path)
    assert shown.shape == (60, 40, 3) and image_size(path) == (40, 60)
    assert shown[:, 30:].mean() > 200 and shown[:, :10].mean() < 50
    np.testing.assert_array_equal(load_image(path.read_bytes()), shown)
    assert read_image(path).shape == (40, 60, 3)  # datasets: their masks are drawn on the stored pixels


def test_sixteen_bit_images_are_scaled_not_clipped():
    from fbrs.images import load_image

    ramp = (np.arange(64 * 16, dtype=np.uint32).reshape(16, 64) * 64).astype(np.uint16)
    image = load_image(encoded(ramp))
    np.testing.assert_array_equal(image[:, :, 0], ((ramp.astype(np.uint32) + 128) // 257).astype(np.uint8))


def test_oversized_and_broken_images_raise_clear_errors_from_the_header(tmp_path):
    from fbrs.images import ImageTooLargeError, load_image, load_mask
    from tests.test_app_hostile import png_header_only

    with pytest.raises(ImageTooLargeError, match="upload is 3000x3000 = 9000000 pixels; the limit is 1000000"):
        load_image(png_header_only(3000, 3000), max_pixels=10**6, what="upload")
    with pytest.raises(ImageTooLargeError, match="decode safely"):
        load_image(png_header_only(30000, 30000))  # Pillow's decompression-bomb bound
    with pytest.raises(ImageTooLargeError):
        load_mask(png_header_only(30000, 30000), width=10, height=10, max_pixels=1000)
    with pytest.raises(InvalidImageError, match="is 20x10 but the image is 10x10"):
        load_mask(encoded(np.zeros((10, 20), np.uint8)), width=10, height=10)
    truncated = encoded(np.zeros((50, 50, 3), np.uint8), "JPEG")[:200]
    with pytest.raises(InvalidImageError):
        load_image(truncated)
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(b"")
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_create_files_per_the_umask(tmp_path, umask):
    from fbrs.io_utils import save_png_atomic, write_text_atomic

    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "log.json", "{}")
        save_png_atomic(tmp_path / "masks" / "mask.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(previous)
    for path in (tmp_path / "log.json", tmp_path / "masks" / "mask.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_paths_write_all_targets_or_none(tmp_path):
    from fbrs.io_utils import atomic_paths

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old")
    with pytest.raises(RuntimeError), atomic_paths([first, second]) as (temporary_first, temporary_second):
        temporary_first.write_text("new")
        raise RuntimeError("the second output failed")
    assert first.read_text() == "old" and not second.exists()
    assert not list(tmp_path.glob("*.tmp"))
