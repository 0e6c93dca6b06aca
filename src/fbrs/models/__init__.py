"""Models: backbones, DeepLabV3+, distance maps, the registry of builders and checkpoint I/O."""

from fbrs.models.builders import build_model, build_model_from_config, list_models
from fbrs.models.checkpoint import DEFAULT_MODEL_PATH, load_default_model, load_model, save_model
from fbrs.models.interactive_model import INSERTIONS, InteractiveModel, ModelConfig

__all__ = [
    "DEFAULT_MODEL_PATH",
    "INSERTIONS",
    "InteractiveModel",
    "ModelConfig",
    "build_model",
    "build_model_from_config",
    "list_models",
    "load_default_model",
    "load_model",
    "save_model",
]
