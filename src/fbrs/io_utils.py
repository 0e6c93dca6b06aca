"""Atomic file writes: a file is either the old one or the complete new one, never half-written.

Files are created with the permissions of a plain `open()` (0666 less the umask), not mkstemp's 0600:
masks, COCO files and click logs are meant to be read by other users' tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path


def _create_temporary(target: Path) -> Path:
    """A new empty file beside `target`, created exclusively with mode 0666 & ~umask (the kernel applies it)."""
    for _ in range(100):
        temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return temporary
    raise FileExistsError(f"cannot create a temporary file beside {target}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`."""
    with atomic_paths([path]) as (temporary,):
        yield temporary


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`; only when the block succeeds are they all renamed onto
    their targets, so a failure while writing any of them leaves every target as it was."""
    targets = [Path(path) for path in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporaries.append(_create_temporary(target))
        yield list(temporaries)
        for temporary, target in zip(temporaries, targets, strict=True):
            os.replace(temporary, target)
    except BaseException:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_png_atomic(path: str | os.PathLike, array) -> None:
    """Save a uint8/uint16 (H, W) or uint8 (H, W, 3) array as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (provenance of weights and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
