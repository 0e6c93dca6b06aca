"""The `fbrs` command. Each area of the package contributes its sub-commands through a
`register(subparsers)` function in its own `cli` module, so this file never grows with them."""

from __future__ import annotations

import argparse
import importlib
import sys

from fbrs.errors import FbrsError

# Order = order in `fbrs --help`.
COMMAND_MODULES = (
    "fbrs.inference.cli",  # predict, convert, export-onnx, models, demo
    "fbrs.evaluation.cli",  # evaluate, report, bench
    "fbrs.studies.cli",  # study
    "fbrs.training.cli",  # train, calibrate, train-sam, pack-data
    "fbrs.app.cli",  # app
    "fbrs.serve.cli",  # serve label-studio, serve cvat
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fbrs", description="Click-based interactive segmentation with f-BRS."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except FbrsError as error:
        print(f"fbrs {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fbrs {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
