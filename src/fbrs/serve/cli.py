"""`fbrs serve label-studio` and `fbrs serve cvat`: fbrs as an annotation tool's model server."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from fbrs.errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve fbrs to an annotation tool (Label Studio ML backend, CVAT interactor)",
        description="Serve fbrs to an annotation tool. See docs/integrations.md.",
    )
    platforms = serve.add_subparsers(dest="platform", metavar="PLATFORM")
    platforms.required = True

    studio = platforms.add_parser(
        "label-studio", help="a Label Studio ML backend (interactive brush masks from keypoint clicks)",
        description="A Label Studio ML backend: connect it in the project's Settings > Model with "
                    "'Use for interactive preannotations' on; the labelling config needs an Image, "
                    "KeyPointLabels smart=\"true\" and BrushLabels.",
    )
    _common_options(studio, port=9090)
    studio.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"), metavar="URL",
                        help="where Label Studio is, to fetch uploaded and served files (default: $LABEL_STUDIO_URL, "
                             "else the hostname Label Studio sends on connecting)")
    studio.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), metavar="KEY",
                        help="a Label Studio access token (legacy or personal) to fetch task images "
                             "(default: $LABEL_STUDIO_API_KEY, else the token Label Studio sends on connecting)")
    studio.add_argument("--local-files-root", default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT"), metavar="DIR",
                        help="read /data/local-files/?d=... from this folder instead of fetching them from "
                             "Label Studio (default: $LOCAL_FILES_DOCUMENT_ROOT)")
    studio.add_argument("--basic-auth", default=os.environ.get("FBRS_BASIC_AUTH"), metavar="USER:PASSWORD",
                        help="require HTTP basic auth (Label Studio's 'Basic Authentication' fields of the model)")
    studio.set_defaults(handler=_handle_label_studio)

    cvat = platforms.add_parser(
        "cvat", help="CVAT's interactor contract (version 2) over plain HTTP, without nuclio",
        description="CVAT's interactor contract over HTTP: POST / with {image, pos_points, neg_points, obj_bbox}. "
                    "For CVAT itself deploy integrations/cvat/fbrs with nuctl (docs/integrations.md).",
    )
    _common_options(cvat, port=9091)
    cvat.set_defaults(handler=_handle_cvat)


def _common_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                        "0.0.0.0 for Label Studio or CVAT in containers)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    parser.add_argument("--mode", default="f-BRS-B", help="predictor mode (default f-BRS-B; NoBRS is fastest)")
    parser.add_argument("--model", default=None, metavar="PATH", help="model file (default: the bundled model)")
    parser.add_argument("--cache-size", type=int, default=8, metavar="N",
                        help="images kept warm, each with its predictor (default 8)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name clients reach the server under (the Host header); default: loopback names "
                             "when listening on loopback, any name otherwise")


def _segmenter(args: argparse.Namespace) -> Any:
    from fbrs.inference.modes import MODES
    from fbrs.models import load_default_model, load_model
    from fbrs.serve.segmenter import WarmSegmenter

    if args.mode not in MODES:
        raise ConfigError(f"unknown --mode {args.mode!r}; available: {', '.join(MODES)}")
    if args.cache_size < 1:
        raise ConfigError(f"--cache-size must be at least 1, got {args.cache_size}")
    model = load_model(args.model) if args.model else load_default_model()
    return WarmSegmenter(model, mode=args.mode, cache_size=args.cache_size)


def _allowed_hosts(host: str, extra: list[str]) -> tuple[str, ...]:
    if extra:
        return tuple(dict.fromkeys([*LOOPBACK_HOSTS, host, *extra]))
    if host in LOOPBACK_HOSTS:
        return LOOPBACK_HOSTS
    return ("*",)  # reached by a tool's server under a name only the deployment knows (a container's name)


def _handle_label_studio(args: argparse.Namespace) -> int:
    from fbrs.serve.label_studio import LabelStudioBackend, create_label_studio_app
    from fbrs.serve.task_images import LabelStudioConnection, TaskImageReader

    basic_auth = None
    if args.basic_auth:
        user, separator, password = args.basic_auth.partition(":")
        if not separator or not user:
            raise ConfigError("--basic-auth must be USER:PASSWORD")
        basic_auth = (user, password)
    if args.local_files_root and not os.path.isdir(args.local_files_root):
        raise ConfigError(f"--local-files-root is not a folder: {args.local_files_root}")
    listener = _listen(args.host, args.port)
    connection = LabelStudioConnection()
    connection.update(args.label_studio_url, args.api_key)
    backend = LabelStudioBackend(_segmenter(args), TaskImageReader(connection, args.local_files_root),
                                 keep_connection=bool(args.label_studio_url and args.api_key))
    app = create_label_studio_app(backend, _allowed_hosts(args.host, args.allowed_host), basic_auth)
    return _serve(app, listener, f"Label Studio ML backend {backend.version}", args)


def _handle_cvat(args: argparse.Namespace) -> int:
    from fbrs.serve.cvat import CvatInteractor, create_cvat_app

    listener = _listen(args.host, args.port)
    app = create_cvat_app(CvatInteractor(_segmenter(args)), _allowed_hosts(args.host, args.allowed_host))
    return _serve(app, listener, f"CVAT interactor ({args.mode})", args)


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so a port in use is said before the model loads."""
    from fbrs.app.cli import listening_socket  # one place that binds and explains failures

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    return listening_socket(host, port)


def _serve(app: Any, listener: socket.socket, what: str, args: argparse.Namespace) -> int:
    import uvicorn

    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"fbrs serve {args.platform}: {what} on http://{shown}:{args.port}/ (Ctrl+C to stop)", flush=True)
    if args.host not in LOOPBACK_HOSTS:
        print(f"fbrs serve {args.platform}: warning: listening on {args.host}; anyone who reaches it can run the "
              "model" + ("" if args.platform == "cvat" else " (use --basic-auth)"), file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with listener:
        server.run(sockets=[listener])
    return 0
