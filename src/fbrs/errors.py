"""Exception types people can act on. The CLI and the HTTP API turn these into messages / 4xx."""


class FbrsError(Exception):
    """Base class of every error fbrs raises on purpose."""


class InvalidImageError(FbrsError, ValueError):
    """The image cannot be read or is not an image we can segment."""


class InvalidClickError(FbrsError, ValueError):
    """A click lies outside the image or is malformed."""


class CheckpointError(FbrsError):
    """A model file is missing, truncated, foreign or of an unknown layout."""


class DatasetError(FbrsError):
    """A dataset folder is missing or does not have the expected layout."""


class ConfigError(FbrsError, ValueError):
    """A configuration file or override is invalid."""


class MissingDependencyError(FbrsError, ImportError):
    """An optional dependency is not installed; the message names the extra to install (e.g. fbrs[onnx])."""


class InvalidStateError(FbrsError, ValueError):
    """A predictor state that is not this predictor's, or was made on another image than the current one."""
