"""Multi-scale Earth-observation CATE pipeline: tiling, embedding, Multi-scale Concatenation, cross-fitted
causal forests and RATE.

Public API (imported lazily, so ``import pipeline.rate`` stays light)::

    Study, StudyResult, load_units, load_result   # a study from Python (pipeline.api)
    SceneCatalog                                  # scenes (pipeline.imagery)
    rate, RATEResult                              # RATE and the RATE Ratio (pipeline.rate)
    MultiScaleLearner                             # Multi-scale Concatenation around any learner
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Study": "api", "StudyResult": "api", "load_units": "api", "load_result": "api",
    "SceneCatalog": "imagery", "rate": "rate", "RATEResult": "rate", "MultiScaleLearner": "concat",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
