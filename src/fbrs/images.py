"""Image input handling: everything that enters fbrs becomes an (H, W, 3) uint8 RGB array here."""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import InvalidImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageIdentity:
    """Which image a predictor state belongs to: the (H, W, 3) shape and a CRC-32 of the pixels.

    CRC-32, not a cryptographic hash: it only has to tell a state of another image from one of this image
    (a mistake, not an attack), and it is the fastest full-pixel digest at hand (measured: 0.2 ms for
    640x480, 17-35 ms for 12 megapixels on one busy core; adler32 1.4x, SHA-1 2.5x, BLAKE2b 3x that)."""

    shape: tuple[int, ...]
    crc32: int

    @classmethod
    def of(cls, image: np.ndarray) -> ImageIdentity:
        """The identity of an (H, W, 3) uint8 image (as `as_rgb_uint8` returns it)."""
        return cls(tuple(image.shape), zlib.crc32(np.ascontiguousarray(image).data))

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.shape))} image, CRC-32 {self.crc32:08x}"


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to (H, W, 3) uint8 RGB.

    Accepted: (H, W) or (H, W, 1) grayscale, (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped), with dtype
    uint8, uint16 (scaled by 1/257), bool, or float in [0, 1]. Anything else raises InvalidImageError.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(
            f"image must have shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"image is empty: shape {tuple(image.shape)}")
    image = image[:, :, :3]
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise InvalidImageError("float images must hold finite values in [0, 1]")
        image = np.round(image * 255.0).astype(np.uint8)
    else:
        raise InvalidImageError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float")
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the caller allows (or than is safe to decode). HTTP 413 in the app."""


# EXIF orientations 5-8 turn the stored image by 90 degrees: width and height swap on display.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)

ImageSource = str | os.PathLike | bytes


def _describe(source: ImageSource, what: str | None) -> str:
    if what is not None:
        return what
    return "image" if isinstance(source, (bytes, bytearray)) else f"image {Path(source)}"


def _unreadable(source: ImageSource, what: str, reason: str) -> InvalidImageError:
    if isinstance(source, (bytes, bytearray)):
        return InvalidImageError(f"{what} is not a readable image: {reason}")
    return InvalidImageError(f"cannot read {what}: {reason}")


def _open(source: ImageSource, what: str):
    """A lazily decoding PIL image of a path or of bytes; only the header has been read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InvalidImageError(f"{what} is empty")
        handle: Any = io.BytesIO(source)
    else:
        handle = Path(source)
        if not handle.is_file():
            raise InvalidImageError(f"image file not found: {handle}")
    try:
        return Image.open(handle)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{what} is too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise _unreadable(source, what, "unknown format (use PNG, JPEG, BMP, TIFF or WebP)") from None
    except Exception as error:  # noqa: BLE001 - a malformed header makes Pillow raise nearly anything
        raise _unreadable(source, what, str(error) or type(error).__name__) from None


def _orientation(pil) -> int:
    try:
        return int(pil.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is not worth refusing the image for
        return 1


def _displayed_size(pil, orient: bool) -> tuple[int, int]:
    width, height = int(pil.width), int(pil.height)
    if orient and _orientation(pil) in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )


def image_size(source: ImageSource, *, orient: bool = True, what: str | None = None) -> tuple[int, int]:
    """(width, height) from the file header alone, as displayed (EXIF orientation applied unless
    `orient` is False). Raises InvalidImageError naming the file."""
    what = _describe(source, what)
    with _open(source, what) as pil:
        return _displayed_size(pil, orient)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    orient: bool = True,
    what: str | None = None,
) -> np.ndarray:
    """The one image reader: a file path or the bytes of an image file -> (H, W, 3) uint8 RGB.

    The size is checked from the header before any pixel is decoded (`max_pixels`, and Pillow's
    decompression-bomb bound): ImageTooLargeError. EXIF orientation is applied (`orient`), so clicks
    are in the frame that viewers show. 16-bit images are scaled (by 1/257), not clipped. Anything
    unreadable raises InvalidImageError naming `what` (default: the path).
    """
    from PIL import ImageOps

    what = _describe(source, what)
    with _open(source, what) as pil:
        _check_pixels(*_displayed_size(pil, orient), max_pixels, what)
        try:
            pil.load()
            if orient and _orientation(pil) != 1:
                pil = ImageOps.exif_transpose(pil)
            if pil.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                array = np.clip(np.asarray(pil), 0, 65535).astype(np.uint16)
            elif pil.mode in ("RGB", "L", "RGBA"):
                array = np.asarray(pil)
            else:
                array = np.asarray(pil.convert("RGB"))
        except MemoryError:
            raise ImageTooLargeError(f"{what} does not fit in memory") from None
        except Exception as error:  # noqa: BLE001 - corrupt pixel data makes decoders raise nearly anything
            raise _unreadable(source, what, str(error) or type(error).__name__) from None
    return as_rgb_uint8(array)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, pixels as stored (no EXIF rotation: dataset masks are
    drawn in that frame); raises InvalidImageError naming the file. User-facing paths use `load_image`."""
    return load_image(path, orient=False)


def load_mask(
    source: ImageSource,
    *,
    width: int,
    height: int,
    max_pixels: int | None = None,
    what: str = "mask",
) -> np.ndarray:
    """A mask image (any mode; non-zero = object) -> (H, W) bool of the given size.

    Its header is checked first, against `max_pixels` (ImageTooLargeError) and then against
    width x height (InvalidImageError), so a mismatched or oversized mask is refused undecoded.
    """
    from PIL import ImageOps

    with _open(source, what) as pil:
        mask_width, mask_height = _displayed_size(pil, True)
        _check_pixels(mask_width, mask_height, max_pixels, what)
        if (mask_width, mask_height) != (width, height):
            raise InvalidImageError(f"{what} is {mask_width}x{mask_height} but the image is {width}x{height}")
        try:
            pil.load()
            if _orientation(pil) != 1:
                pil = ImageOps.exif_transpose(pil)
            array = np.asarray(pil)
        except Exception as error:  # noqa: BLE001 - corrupt pixel data makes decoders raise nearly anything
            raise _unreadable(source, what, str(error) or type(error).__name__) from None
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2)
    if array.shape != (height, width):
        raise InvalidImageError(f"{what} decodes to shape {array.shape}, expected ({height}, {width})")
    return array > 0
