"""The SAM-style model family: an image encoder run once per image (ONNX Runtime) and a torch prompt
encoder + mask decoder run per click, with f-BRS insertion points (see `decoder.SAM_INSERTIONS`)."""

from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.decoder import SAM_INSERTIONS, SamDecoder, SamPrompt, onnx_mask_choice
from fbrs.models.sam.image_encoder import ImageEmbedding, OnnxImageEncoder
from fbrs.models.sam.model import SamModel, load_default_sam_model, load_sam_model

__all__ = [
    "SAM_INSERTIONS",
    "ImageEmbedding",
    "OnnxImageEncoder",
    "SamDecoder",
    "SamDecoderConfig",
    "SamModel",
    "SamPrompt",
    "load_default_sam_model",
    "load_sam_model",
    "onnx_mask_choice",
]
