"""Image encoders for multi-scale chips: registry, timm ViT/CNN, spectral statistics, safe weights."""

from .encoders import Encoder, SpectralStats, TimmEncoder
from .errors import EncoderError
from .registry import create_encoder, encoder_card, list_encoders
from .weights import load_weights

__all__ = ["Encoder", "SpectralStats", "TimmEncoder", "EncoderError", "create_encoder", "encoder_card",
           "list_encoders", "load_weights"]
