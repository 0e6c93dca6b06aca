"""The annotation app: web UI + HTTP API (`fbrs app`). See docs/app.md.

`create_app(engine, project)` builds the FastAPI app; `fbrs.app.cli.run_app(...)` serves a folder.

The names below are imported on first use (PEP 562), so that `fbrs.app.cli` (loaded by every `fbrs`
command to register `fbrs app`) does not pull in FastAPI: `fbrs train` on a GPU box without the web
stack must still work.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnnotationProject": "fbrs.app.project",
    "AnnotationSession": "fbrs.app.sessions",
    "AppLimits": "fbrs.app.project",
    "PredictionEngine": "fbrs.app.engine",
    "PredictorSettings": "fbrs.app.engine",
    "SessionStore": "fbrs.app.store",
    "create_app": "fbrs.app.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fbrs.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
