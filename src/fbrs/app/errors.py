"""Errors of the annotation app. Each maps to one HTTP status in `fbrs.app.server`."""

from __future__ import annotations

from fbrs.errors import FbrsError


class AnnotationFileError(FbrsError):
    """A saved annotation file (instance PNG or click log) cannot be read back. HTTP 500."""


class SessionNotFoundError(FbrsError, LookupError):
    """No live session has this id (never created, deleted, or evicted as least recently used). HTTP 404."""


class UnknownImageError(FbrsError, LookupError):
    """The image name is not one of the annotation folder's images. HTTP 404."""


class AnnotationConflictError(FbrsError):
    """The request does not fit the session's state (nothing to undo, empty object, ...). HTTP 409."""


class PayloadTooLargeError(FbrsError):
    """An upload or image exceeds the configured limits. HTTP 413."""


class ModeUnavailableError(FbrsError, ValueError):
    """Unknown predictor mode, or a learned mode while no model is loaded. HTTP 400."""
