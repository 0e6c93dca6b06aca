"""`fbrs train` under torchrun with two CPU processes (gloo): DistributedDataParallel end to end."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fbrs.models import load_model

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_train_and_write_one_model(data_dir, tmp_path):
    source = data_dir / "train" / "ccp_person"
    folder = tmp_path / "ccp_person"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for stem in ("0001", "0003", "0005", "0007", "0009", "0011"):
        shutil.copy(source / "images" / f"{stem}.jpg", folder / "images")
        shutil.copy(source / "masks" / f"{stem}.png", folder / "masks")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    output = tmp_path / "run"
    with socket.socket() as probe:  # a free port, so parallel runs do not collide on torchrun's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "fbrs.cli", "train"]
    command += [str(REPO / "configs" / "tiny_test.toml"), "--set", f'data.sources=[{{path="{folder}"}}]']
    command += ["--output-dir", str(output), "--device", "cpu", "--no-progress"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "on cpu x2" in result.stdout
    with (output / "train_log.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3, 4]  # the global batch of 4 is split 2 + 2 between the processes
    assert load_model(output / "best.safetensors").config.name == "tiny_test"
