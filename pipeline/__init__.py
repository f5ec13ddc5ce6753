"""Multi-scale Earth-observation CATE pipeline: tiling, embedding, Multi-scale Concatenation, cross-fitted
causal forests and RATE.

Public API (imported lazily, so ``import pipeline.estimate.rate`` stays light)::

    Study, StudyResult, load_units, load_result   # a study from Python (pipeline.api)
    SceneCatalog                                  # scenes (pipeline.imagery.scenes)
    rate, RATEResult                              # RATE and the RATE Ratio (pipeline.estimate.rate)
    MultiScaleLearner                             # Multi-scale Concatenation around any learner
    CausalForestCATE                              # the cross-fitted pipeline's CATE estimator (econml shape)
    PipelineError, ConfigError, UnitsError, ImageryError, TilingError, EstimationError, ArtifactError,
    EncoderError                                  # typed errors (where / expected / got / fix)

Floors (each imports only the ones below it; ``models`` is below them all and never imports ``pipeline``)::

    stages/ api.py cli.py      entry points: parse, call one procedure
    procedures/                one file-in/file-out function per stage
    report/                    figures and the HTML/Markdown report
    imagery/    estimate/      scenes, tiling, embedding | concat, CATE, RATE, inference
    core/                      config schema, errors, artifacts, compute, units, layout
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Study": "api", "StudyResult": "api", "load_units": "api", "load_result": "api",
    "SceneCatalog": "imagery.scenes", "rate": "estimate.rate", "RATEResult": "estimate.rate",
    "MultiScaleLearner": "estimate.concat", "CausalForestCATE": "estimate.cate",
    "PipelineError": "core.errors", "ConfigError": "core.errors", "UnitsError": "core.errors",
    "ImageryError": "core.errors", "TilingError": "core.errors", "EstimationError": "core.errors",
    "ArtifactError": "core.errors", "EncoderError": "models.errors",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module = _EXPORTS[name]
        full = module if module.startswith("models") else f"{__name__}.{module}"
        return getattr(importlib.import_module(full), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
