"""Image encoders for multi-scale chips: registry, timm ViT/CNN, spectral statistics, safe weights, scaling
strategies and complexity counts. Never imports :mod:`pipeline`.

The names below are imported lazily, so that ``import models.scaling`` (pure configuration arithmetic)
does not load torch or timm.
"""

_EXPORTS = {
    "Encoder": "encoders", "SpectralStats": "encoders", "TimmEncoder": "encoders", "EncoderError": "errors",
    "create_encoder": "registry", "encoder_card": "registry", "list_encoders": "registry",
    "load_weights": "weights",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
