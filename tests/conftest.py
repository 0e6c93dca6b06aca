"""Shared fixtures. Tests that need ../shared skip where it is absent (a user's clone), but under
CI=true a missing ../shared is a failure: CI always has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FBRS_SHARED", REPO_ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def copy_training_subset(data_dir: Path, set_name: str, stems: tuple[str, ...], destination: Path) -> Path:
    """Copy a few images + masks of a shared training folder (`data_dir/train/set_name`) to `destination`."""
    import shutil

    source = data_dir / "train" / set_name
    target = destination / set_name
    for folder in ("images", "masks"):
        (target / folder).mkdir(parents=True)
    for stem in stems:
        shutil.copy(source / "images" / f"{stem}.jpg", target / "images")
        shutil.copy(source / "masks" / f"{stem}.png", target / "masks")
    return target


def require_shared(path: Path) -> Path:
    """Return `path` if it exists; otherwise skip (or fail under CI=true) with a clear reason."""
    if path.exists():
        return path
    reason = f"needs {path} (the shared reference/data folder beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason} is missing")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_shared(REFERENCE)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_shared(DATA)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # backend="onnx" exports into a cache folder: never the user's ~/.cache during tests.
    previous = os.environ.get("FBRS_CACHE_DIR")
    os.environ["FBRS_CACHE_DIR"] = str(tmp_path_factory.mktemp("fbrs_cache"))
    yield
    if previous is None:
        os.environ.pop("FBRS_CACHE_DIR", None)
    else:
        os.environ["FBRS_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _single_thread():
    # The goldens were produced with one thread; summation order matters for L-BFGS trajectories.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model():
    """The 8-channel test model with seeded weights and non-trivial BatchNorm statistics, so that
    predictions depend on the input."""
    import fbrs

    torch.manual_seed(0)
    model = fbrs.build_model("tiny_test")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_sam():
    """A tiny random SAM-shaped model (fbrs.models.sam.tiny), the same weights in every test module."""
    from fbrs.models.sam.tiny import build_tiny_sam_model

    return build_tiny_sam_model(seed=0)


@pytest.fixture(scope="module")
def box_image():
    """(72, 96, 3) uint8: dark noise with a bright 30 x 40 box at rows 20-49, columns 30-69 (the object)."""
    import numpy as np

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(72, 96, 3), dtype=np.uint8)
    picture[20:50, 30:70] = rng.integers(180, 255, size=(30, 40, 3), dtype=np.uint8)
    return picture
