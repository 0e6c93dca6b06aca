"""fbrs: click-based interactive image segmentation with f-BRS.

    import fbrs
    model = fbrs.load_model("model.safetensors")          # or fbrs.models.load_default_model()
    predictor = fbrs.Predictor(model, mode="f-BRS-B")
    predictor.set_image(rgb)                               # (H, W, 3) uint8
    probs = predictor.add_click(y=120, x=80, positive=True)
"""

from fbrs.errors import CheckpointError, DatasetError, FbrsError, InvalidClickError, InvalidImageError
from fbrs.inference import Click, Predictor, available_modes, create_predictor
from fbrs.models import build_model, list_models, load_default_model, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Click",
    "DatasetError",
    "FbrsError",
    "InvalidClickError",
    "InvalidImageError",
    "Predictor",
    "available_modes",
    "build_model",
    "create_predictor",
    "list_models",
    "load_default_model",
    "load_model",
    "save_model",
]
