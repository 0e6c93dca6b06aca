"""A real Label Studio for the tests and the screenshot script: its own virtual environment, a server on loopback.

Label Studio pins Django, numpy (< 2.3 through OpenCV) and much else, so it never enters the project's .venv:
it lives in .venv-label-studio/ beside it (FBRS_LABEL_STUDIO_VENV to move it), created on first use where
allowed (CI=true, or FBRS_INSTALL_LABEL_STUDIO=1, or `python tests/label_studio_env.py`) and reused after.
Measured on a 2-core machine: installing takes about 3 minutes, a first start (database migrations) about
45-75 s, a later start on a migrated database about 5 s.

The server runs with a temporary data folder, binds 127.0.0.1 only, serves local files from one folder,
makes its user and token without questions, checks no version online, sends no analytics, and is stopped
(its process group) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO_VERSION = "1.23.2"
SDK_VERSION = "2.1.2"
VENV = Path(os.environ.get("FBRS_LABEL_STUDIO_VENV", REPO_ROOT / ".venv-label-studio"))
STAMP = VENV / f".installed-{LABEL_STUDIO_VERSION}-{SDK_VERSION}"
INSTALL_TIMEOUT_S = 20 * 60
START_TIMEOUT_S = 240
USER = "fbrs-tests@example.com"
PASSWORD = "fbrs-tests-password"
TOKEN = "fbrs0tests0token0123456789abcdef"


class LabelStudioUnavailable(RuntimeError):
    """Label Studio cannot be set up here; the message says why and how."""


def venv_python() -> Path:
    return VENV / "bin" / "python"


def install_allowed() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FBRS_INSTALL_LABEL_STUDIO") == "1"


def ensure_installed(allow_install: bool | None = None) -> Path:
    """The Label Studio venv's python; installs it when absent and allowed, else LabelStudioUnavailable."""
    if STAMP.exists() and venv_python().exists():
        return venv_python()
    if not (install_allowed() if allow_install is None else allow_install):
        raise LabelStudioUnavailable(
            f"Label Studio is not installed in {VENV} (it needs its own venv: ~3 minutes, ~1 GB); run "
            "`.venv/bin/python tests/label_studio_env.py` or set FBRS_INSTALL_LABEL_STUDIO=1"
        )
    started = time.monotonic()
    if VENV.exists():
        shutil.rmtree(VENV)  # a half-made venv from an interrupted install
    commands = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"label-studio=={LABEL_STUDIO_VERSION}", f"label-studio-sdk=={SDK_VERSION}"],
    ]
    for command in commands:
        left = INSTALL_TIMEOUT_S - (time.monotonic() - started)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            raise LabelStudioUnavailable(f"installing Label Studio took over {INSTALL_TIMEOUT_S} s") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise LabelStudioUnavailable(f"installing Label Studio failed ({' '.join(command[:4])} ...):\n{tail}")
    STAMP.write_text(json.dumps({"install_seconds": round(time.monotonic() - started, 1)}))
    return venv_python()


def install_seconds() -> float | None:
    try:
        return json.loads(STAMP.read_text()).get("install_seconds")
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioUnavailable(f"{what} exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise LabelStudioUnavailable(f"{what} did not answer {url} within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `start_*` (its own process group: Label Studio runs child processes)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@dataclass
class LabelStudioServer:
    url: str
    token: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    start_seconds: float

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_label_studio(data_dir: Path, local_files_root: Path) -> LabelStudioServer:
    """Label Studio on 127.0.0.1 with `data_dir` (empty: migrated now), serving files under `local_files_root`."""
    label_studio = VENV / "bin" / "label-studio"
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(local_files_root),
        # The ML backend is on loopback, which Label Studio refuses by default: the backend's URL
        # (ML_BLOCK_LOCAL_IP) and the /webhook it registers for it on connecting (SSRF_PROTECTION_ENABLED).
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        # A loaded CI machine may need more than Label Studio's 1 s / 3 s for /health and /setup.
        "ML_TIMEOUT_HEALTH": "15",
        "ML_TIMEOUT_SETUP": "30",
        "ML_CONNECTION_TIMEOUT": "10",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    command = [
        str(label_studio), "start", "--no-browser", "--data-dir", str(data_dir),
        "--internal-host", "127.0.0.1", "--port", str(port),
        "--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token",
    ]
    log_path = data_dir / "label-studio.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=data_dir, start_new_session=True)
    server = LabelStudioServer(f"http://127.0.0.1:{port}", TOKEN, process, data_dir, log_path, 0.0)
    try:
        wait_for_http(f"{server.url}/health", process, START_TIMEOUT_S, "Label Studio")
    except LabelStudioUnavailable as error:
        stop(process)
        raise LabelStudioUnavailable(f"{error}\n{server.log_tail()}") from None
    server.start_seconds = time.monotonic() - started
    return server


def run_driver(script: Path, spec: dict, timeout: float = 600) -> dict:
    """Run `script` (which uses label-studio-sdk) in the Label Studio venv with `spec` as JSON on stdin."""
    result = subprocess.run([str(venv_python()), str(script)], input=json.dumps(spec), capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{script.name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    begun = time.monotonic()
    python = ensure_installed(allow_install=True)
    print(f"Label Studio {LABEL_STUDIO_VERSION} with label-studio-sdk {SDK_VERSION} in {VENV} "
          f"({time.monotonic() - begun:.0f} s)")
