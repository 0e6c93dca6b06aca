"""`fbrs app`: serve the annotation web UI and HTTP API on a folder of images."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading
import webbrowser
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fbrs.errors import CheckpointError, ConfigError

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
SAMPLES_OUT_DIR = Path("fbrs_annotations")


def load_app_model(model_path: str | os.PathLike | None) -> tuple[Any, str | None]:
    """(model, name) from `model_path`, else the bundled default model, else (None, None) with a warning."""
    from fbrs.models import load_default_model, load_model

    if model_path is not None:
        return load_model(model_path), Path(model_path).name
    try:
        return load_default_model(), "default"
    except CheckpointError as error:
        print(f"fbrs app: warning: {error}; only modes that need no model are available", file=sys.stderr)
        return None, None


def build_app(
    images_dir: str | os.PathLike | None,
    model_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    limits: Any = None,
    model: Any = None,
    backend: str = "torch",
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] = (),
    labels: Any = None,
):
    """The FastAPI app for a folder (None: the bundled sample images, saved to ./fbrs_annotations).

    `model` (an InteractiveModel) overrides `model_path`; tests pass `build_model("tiny_test")`.
    backend: "torch", "onnx" or "auto" (ONNX Runtime where installed; see `prepare_backend`).
    allowed_hosts / allowed_origins: see `fbrs.app.server.create_app` (default: this machine's names).
    labels: a `fbrs.app.labels.LabelSet` (default: the one label "object").
    """
    from fbrs.app.engine import PredictionEngine
    from fbrs.app.project import AnnotationProject, AppLimits
    from fbrs.app.server import create_app
    from fbrs.inference.default_mode import FALLBACK_MODE

    if images_dir is None:
        images_dir = SAMPLES_DIR
    if out_dir is None and Path(images_dir).resolve() == SAMPLES_DIR:
        out_dir = SAMPLES_OUT_DIR  # the package folder may be read-only, and is no place for user data
    project = AnnotationProject(images_dir, out_dir, limits=limits or AppLimits(), labels=labels)  # checks the folder
    model_name = "given model" if model is not None else None
    # A model given by the user is a DeepLab one: new sessions run it (f-BRS-B) rather than the SAM family,
    # which would ignore it. Without one the default is the app's DEFAULT_MODE (the SAM family).
    default_mode = FALLBACK_MODE if model is not None or model_path is not None else None
    if model is None:
        model, model_name = load_app_model(model_path)
    engine = PredictionEngine(model, model_name=model_name, backend=prepare_backend(model, backend),
                              default_mode=default_mode)
    if not any(mode["available"] for mode in engine.modes()):
        raise CheckpointError("no predictor mode can run without a model; pass --model PATH")
    from fbrs.app.guards import LOOPBACK_HOSTS

    return create_app(engine, project, allowed_hosts=tuple(allowed_hosts or LOOPBACK_HOSTS),
                      allowed_origins=tuple(allowed_origins))


def prepare_backend(model: Any, backend: str) -> str:
    """The backend the app will run ("onnx" or "torch") for the choice `backend` ("auto", "torch", "onnx").

    With ONNX Runtime, export the default mode's parts now (once per model, then cached), so that the first
    click does not wait for it; other modes export on first use. "auto" falls back to torch, with a warning,
    when the export fails (e.g. an unwritable cache folder); "onnx" raises."""
    from fbrs.errors import FbrsError
    from fbrs.inference.default_mode import FALLBACK_MODE
    from fbrs.onnx.policy import backend_for_mode

    # The DeepLab model's mode the app starts with (or falls back to); the SAM family has its own model.
    if model is None or backend_for_mode(backend, FALLBACK_MODE) != "onnx":
        return "torch"
    from fbrs.onnx import export_for_modes

    try:
        export_for_modes(model, [FALLBACK_MODE], notify=lambda text: print(f"fbrs app: {text}"))
    except FbrsError as error:
        if backend == "onnx":
            raise
        print(f"fbrs app: warning: ONNX Runtime not used ({error}); running in torch", file=sys.stderr)
        return "torch"
    return "onnx"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a ConfigError that says why not (port in use, unknown host)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({error})") from None
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        hint = "; is another fbrs server running? choose another --port" if error.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}") from None
    return listener


def allowed_hosts_for(host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Host names the server answers to: this machine's loopback names, the bound address unless it is a
    wildcard, and `extra` (from --allowed-host)."""
    from fbrs.app.guards import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return tuple(dict.fromkeys([*names, *extra]))


def run_app(
    images_dir: str | os.PathLike | None,
    model_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    open_browser: bool = False,
    limits: Any = None,
    backend: str = "auto",
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    labels: Any = None,
) -> int:
    """Serve the annotation app until interrupted (what `fbrs app` and `fbrs demo` run). Returns 0.

    The port is bound before anything is printed, so "open http://..." is only said of a server that runs."""
    import uvicorn

    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    hosts = allowed_hosts_for(host, allowed_hosts)
    listener = listening_socket(host, port)  # first: a port in use is said before the model loads
    try:
        app = build_app(images_dir, model_path, out_dir, limits, backend=backend, allowed_hosts=hosts,
                        allowed_origins=allowed_origins, labels=labels)
    except BaseException:
        listener.close()
        raise
    context = app.state.context
    project = context.project
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(f"fbrs app: annotating {project.images_dir} ({len(project.image_names)} images), "
          f"saving to {project.out_dir.resolve()}")
    for name, reason in project.skipped_images().items():
        print(f"fbrs app: warning: skipping {name}: {reason}", file=sys.stderr)
    if context.labels.explicit:
        print(f"fbrs app: labels: {', '.join(context.labels.names)}")
    if context.engine.default_note:
        print(f"fbrs app: {context.engine.default_note}", file=sys.stderr)
    print(f"fbrs app: default mode {context.engine.default_mode} (change it in the UI's Mode menu)")
    print(f"fbrs app: open {url}  (API docs: {url}docs; Ctrl+C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("fbrs app: warning: the API has no authentication; anyone who reaches "
              f"{host}:{port} can read the images and write annotations", file=sys.stderr)
        if "*" not in hosts:
            print(f"fbrs app: requests must name the server as one of {', '.join(hosts)} (the Host header); "
                  "add the names others use with --allowed-host NAME", file=sys.stderr)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with listener:
        server.run(sockets=[listener])
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def labels_from_args(labels: str | None, labels_file: str | None) -> Any:
    """The LabelSet of `--labels` / `--labels-file` (checked now, before the model loads); None: neither."""
    from fbrs.app.labels import load_labels_file, parse_labels_option

    if labels is not None and labels_file is not None:
        raise ConfigError("give --labels or --labels-file, not both")
    if labels is not None:
        return parse_labels_option(labels)
    if labels_file is not None:
        return load_labels_file(labels_file)
    return None


def _handle_app(args: argparse.Namespace) -> int:
    from fbrs.app.project import AppLimits

    if args.images_dir is not None and not Path(args.images_dir).is_dir():
        raise ConfigError(f"images folder not found: {args.images_dir}")
    labels = labels_from_args(args.labels, args.labels_file)
    limits = AppLimits(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        max_image_pixels=args.max_image_pixels,
        max_sessions=args.max_sessions,
        max_session_bytes=args.max_session_memory_mb * 1024 * 1024,
    )
    return run_app(
        args.images_dir, args.model, args.out, args.host, args.port, args.open_browser, limits, args.backend,
        allowed_hosts=args.allowed_host, allowed_origins=args.allowed_origin, labels=labels,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="web UI and HTTP API for annotating a folder of images with clicks",
        description="Serve the annotation web UI and HTTP API (OpenAPI docs at /docs). Saves per image an "
        "instance-id PNG and a click log, and COCO instances JSON (RLE and polygons) for the folder; "
        "reopening the folder resumes where you stopped.",
    )
    parser.add_argument("images_dir", nargs="?", default=None,
                        help="folder of images (default: the bundled sample images)")
    parser.add_argument("--model", default=None,
                        help="model file (.safetensors or original f-BRS .pth; default: the bundled model)")
    parser.add_argument("--out", default=None,
                        help="annotation folder (default: IMAGES_DIR/annotations; ./fbrs_annotations for samples)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=_port, default=8000)
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name clients reach the server under, checked against the Host header (repeatable; "
                        "always allowed: 127.0.0.1, localhost, ::1 and the --host address; '*' allows any)")
    parser.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                        help="a web origin (https://labels.example.org) whose pages may change annotations "
                        "(repeatable; the app's own page always may)")
    parser.add_argument("--labels", default=None, metavar="NAMES",
                        help="the objects' categories, comma-separated, each optionally with a colour: "
                        "'cat,dog:#ff8800' (default: one label, 'object'); the COCO categories, in this order")
    parser.add_argument("--labels-file", default=None, metavar="PATH",
                        help="the labels from a file: one per line ('name' or 'name #rrggbb'), or JSON "
                        "(a list of names or of {\"name\", \"color\"})")
    parser.add_argument("--open-browser", action="store_true", help="open the UI in the default browser")
    parser.add_argument("--max-sessions", type=_positive_int, default=32,
                        help="live sessions kept warm; the least recently used is saved and evicted, and rebuilt "
                        "from what was saved on its next request")
    parser.add_argument("--max-session-memory-mb", type=_positive_int, default=2048,
                        help="estimated memory of the live sessions; past it the least recently used is evicted")
    parser.add_argument("--max-upload-mb", type=_positive_int, default=20)
    parser.add_argument("--max-image-pixels", type=_positive_int, default=25_000_000)
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                        help="where the network runs: auto (default) = ONNX Runtime when fbrs[onnx] is installed "
                        "(~2x faster on a CPU; NoBRS and f-BRS-A/B/C), else torch")
    parser.set_defaults(handler=_handle_app)
