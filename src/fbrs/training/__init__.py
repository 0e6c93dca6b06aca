"""Training: data sources and the held-out split, click sampling, augmentation, losses, typed configs,
the Trainer (`fbrs train`) and the data packer (`fbrs pack-data`). See docs/training.md."""

from fbrs.training.config import TrainConfig, load_config
from fbrs.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
