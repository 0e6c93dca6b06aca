"""Sub-command `fbrs study NAME`: re-run one of the paper's experiments (docs/paper_studies.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from fbrs.studies.paper import add_study_parser

    add_study_parser(subparsers)
