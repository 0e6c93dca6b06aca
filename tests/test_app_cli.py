"""`fbrs app`: argument handling, errors, and the real command serving a folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fbrs.app.cli import SAMPLES_DIR, SAMPLES_OUT_DIR, build_app
from fbrs.cli import build_parser, main
from fbrs.errors import CheckpointError, DatasetError
from tests.test_app_helpers import sample_folder


def test_defaults_bind_to_this_machine_only():
    args = build_parser().parse_args(["app"])
    assert args.images_dir is None and args.host == "127.0.0.1" and args.port == 8000
    assert args.max_sessions == 32 and args.max_session_memory_mb == 2048 and callable(args.handler)
    assert args.allowed_host == [] and args.allowed_origin == []


def test_user_errors_become_messages(tmp_path, capsys):
    assert main(["app", str(tmp_path / "missing")]) == 2
    assert f"images folder not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images in"):
        build_app(tmp_path / "empty", model_path=tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError):
        build_app(SAMPLES_DIR, model_path=tmp_path / "model.safetensors")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["app", "--port", "0"])


def test_clashing_file_stems_are_refused(tmp_path):
    from fbrs.models import build_model

    folder = sample_folder(tmp_path)
    (folder / "coffee.png").write_bytes((folder / "chelsea.jpg").read_bytes())
    with pytest.raises(DatasetError, match="coffee.jpg and coffee.png"):
        build_app(folder, model=build_model("tiny_test"))


def test_samples_are_bundled_and_saved_outside_the_package():
    from fbrs.models import build_model

    app = build_app(SAMPLES_DIR, model=build_model("tiny_test"))
    assert app.state.project.out_dir == SAMPLES_OUT_DIR
    assert len(app.state.project.image_names) >= 2
    assert (SAMPLES_DIR / "README.md").read_text().count("CC0") >= 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fbrs_app_command_serves_the_folder(tmp_path):
    from fbrs.models import build_model, save_model

    model_path = save_model(build_model("tiny_test"), tmp_path / "tiny.safetensors")
    folder = sample_folder(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "fbrs.cli", "app", str(folder), "--model", str(model_path),
               "--out", str(tmp_path / "out"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        info = None
        while info is None:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "fbrs app did not answer within 90 s"
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.3)
        assert info["model"] == "tiny.safetensors"
        assert Path(info["folder"]["images_dir"]) == folder
        session = httpx.post(f"http://127.0.0.1:{port}/api/images/chelsea.jpg/session", timeout=30).json()
        assert (session["width"], session["height"]) == (451, 300)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"open http://127.0.0.1:{port}/" in output


def test_bad_ports_are_refused_with_a_message(tmp_path, capsys):
    for port in ("70000", "0", "http"):
        with pytest.raises(SystemExit) as raised:
            main(["app", "--port", port])
        assert raised.value.code == 2
        assert "expected a port number 1..65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        folder = sample_folder(tmp_path)
        assert main(["app", str(folder), "--port", str(port), "--model", str(tmp_path / "none.safetensors")]) == 2
    captured = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in captured.err and "another --port" in captured.err
    assert "open http" not in captured.out  # nothing claims a server that does not run


def test_allowed_hosts_are_this_machine_plus_what_is_asked():
    from fbrs.app.cli import allowed_hosts_for

    assert allowed_hosts_for("127.0.0.1") == ("127.0.0.1", "localhost", "::1")
    assert allowed_hosts_for("0.0.0.0", ["annotate.lan"]) == ("127.0.0.1", "localhost", "::1", "annotate.lan")
    assert allowed_hosts_for("192.168.1.20")[-1] == "192.168.1.20"
