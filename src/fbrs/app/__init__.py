"""The annotation app: web UI + HTTP API (`fbrs app`). See docs/app.md.

`create_app(engine, project)` builds the FastAPI app; `fbrs.app.cli.run_app(...)` serves a folder.
"""

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.server import create_app
from fbrs.app.sessions import AnnotationSession, SessionStore

__all__ = [
    "AnnotationProject",
    "AnnotationSession",
    "AppLimits",
    "PredictionEngine",
    "PredictorSettings",
    "SessionStore",
    "create_app",
]
