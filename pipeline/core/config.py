"""Validated, frozen run configuration.

``params.yaml`` is loaded with ``yaml.safe_load`` and turned into frozen dataclasses. Unknown keys are
errors that name the key and list close matches; wrong types and out-of-range values name the key, the
expected value and the fix. Each stage reads only its own section(s) (declared in ``dvc.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import yaml

from models.scaling import STRATEGIES
from models.ssl_spec import AUGMENTATIONS, SSL_METHODS

from .errors import ConfigError

# Choice lists: the one home of every enumerated value (validation, docs and templates read them).
RESAMPLING_METHODS = ("average", "nearest")
SIMULATION_DESIGNS = ("shares", "texture")
RADIOMETRY_MODES = ("auto", "none", "l2")
ON_OUTSIDE = ("error", "drop")
LEARNERS = ("causal_forest", "dr_forest")
LINEAR_CORRECTIONS = ("none", "ridge", "auto")
FORESTS = ("compiled", "econml")
PROPENSITY_MODES = ("share", "estimate")
MTRY_RULES = ("grf", "all")
JITTER_JOINS = ("none", "mean", "concat")
TARGETS = ("AUTOC", "QINI")
MISSING_OUTCOME = ("error", "drop")
MISSING_COVARIATES = ("error", "impute")

SCALE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
MAX_YAML_VALUES = 100_000  # scalars and containers after alias expansion (a params file has a few hundred)
MAX_YAML_DEPTH = 50


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING,
        choices: tuple | None = None) -> Any:
    """A config field with its documentation (rendered as a comment in generated params files) and, for
    enumerated values, its choices (validated by :func:`config_from_dict`)."""
    meta = {"doc": doc, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SimulateConfig:
    """Synthetic Landsat-like scene and cluster-randomized trial with a known CATE."""

    design: str = opt("shares", "shares: the effect follows built-up and water shares; texture: it follows the "
                      "arrangement of built-up pixels and the orientation of field strips, at equal shares",
                      choices=SIMULATION_DESIGNS)
    scene_px: int = opt(1024, "scene side in pixels (1024 px at 30 m = 30.7 km)")
    pixel_m: float = opt(30.0, "pixel size in metres")
    epsg: int = opt(32636, "projected CRS of the scene (UTM zone 36N)")
    origin_x: float = opt(420000.0, "west edge of the scene in the CRS")
    origin_y: float = opt(180000.0, "south edge of the scene in the CRS")
    n_locations: int = opt(300, "villages = locations = clusters")
    units_min: int = opt(4, "fewest units per village")
    units_max: int = opt(8, "most units per village")
    treated_share: float = opt(0.5, "share of villages treated")
    noise_sd: float = opt(1.0, "outcome noise SD")
    tau_base: float = opt(1.0, "average treatment effect")
    tau_fine: float = opt(0.8, "effect modification by built-up fraction within fine_window_m")
    tau_coarse: float = opt(0.8, "effect modification by water fraction within coarse_window_m")
    fine_window_m: float = opt(240.0, "window of the fine effect modifier, metres")
    coarse_window_m: float = opt(3840.0, "window of the coarse effect modifier, metres")


@dataclass(frozen=True)
class ColumnsConfig:
    """Names of the required columns in the user's units file."""

    unit_id: str = opt("unit_id", "one row per trial unit")
    location_id: str = opt("location_id", "the place that is tiled (several units may share one)")
    cluster_id: str = opt("cluster_id", "the unit of randomization")
    W: str = opt("W", "treatment (0/1, or text codes)")
    Y: str = opt("Y", "outcome")
    lon: str = opt("lon", "longitude, degrees")
    lat: str = opt("lat", "latitude, degrees")


@dataclass(frozen=True)
class DataConfig:
    """A real study's inputs (see README, "Studies and their data").

    ``root`` is relative to the params file's folder; the environment variable named by ``root_env``
    overrides it. ``units`` (CSV, Parquet/GeoParquet, GeoPackage or Stata) and ``scenes`` (files or
    globs) are relative to the root. ``locations`` is an optional table of coordinates joined to the units
    on ``location_key``. Treatment coded as strings is mapped with ``treated_codes``/``control_codes``;
    ``outcome_difference: [endline, baseline]`` builds Y as their difference. Missing outcomes: ``error`` or
    ``drop`` (counted); missing covariates: ``error`` or ``impute`` (median plus a missing indicator).
    """

    root: str = opt("", "folder of the units file (relative to this file, or absolute)")
    root_env: str = opt("", "optional environment variable overriding root")
    units: str = opt("", "units table (CSV with lon/lat, GeoPackage, GeoParquet or Stata), relative to root")
    locations: str = opt("", "optional table of coordinates joined on location_key")
    location_key: str = opt("", "column shared by units and locations")
    scenes: tuple[str, ...] = opt((), "rasters: files or globs, relative to root")
    columns: ColumnsConfig = opt(doc="column names in the units file", factory=ColumnsConfig)
    covariates: tuple[str, ...] = opt((), "pre-treatment covariates only")
    post_treatment: tuple[str, ...] = opt((), "columns that must never be covariates")
    treated_codes: tuple[str, ...] = opt((), "text codes of treated units (when treatment is coded as text)")
    control_codes: tuple[str, ...] = opt((), "text codes of control units")
    outcome_difference: tuple[str, ...] = opt((), "[endline, baseline]: Y is their difference")
    missing_outcome: str = opt("error", "or drop (counted in the ingest report)", choices=MISSING_OUTCOME)
    missing_covariates: str = opt("error", "or impute (median + missing indicator)", choices=MISSING_COVARIATES)
    source: str = opt("", "where the data come from (shown when they are missing)")


@dataclass(frozen=True)
class ScaleConfig:
    """One spatial scale: a square window ``size_m`` metres wide, resampled to ``px`` x ``px`` pixels."""

    name: str = opt(doc="scale name (no '+' or '/')")
    size_m: float = opt(doc="window width in metres")
    px: int = opt(doc="output size in pixels")


@dataclass(frozen=True)
class JitterCopiesConfig:
    """Jittered copies of some scales (Multi-scale Concatenation's jitter variant): ``copies`` windows per
    location displaced by a seeded distance in ``jitter_m`` metres, tiled as scales ``<scale>@j<i>``."""

    scales: tuple[str, ...] = opt((), "scales to copy")
    copies: int = opt(0, "copies per scale")
    jitter_m: tuple[float, ...] = opt((0.0, 0.0), "[min, max] displacement in metres")
    seed: int = opt(0, "")


@dataclass(frozen=True)
class TileConfig:
    """Tiling: scales, resampling, radiometry ('auto', 'none', 'l2' or a DN multiplier), band selection by
    name (empty = all), optional seeded location jitter [min, max] in metres, read-block size, threads,
    and the policy for locations outside every scene ('error' or 'drop')."""

    scales: tuple[ScaleConfig, ...] = opt((), "window size in metres, output size in pixels")
    resampling: str = opt("average", "exact area average; or nearest", choices=RESAMPLING_METHODS)
    radiometry: Union[float, str] = opt("auto", "auto (file scale/offset, Landsat C2 L2), none, l2, or a DN "
                                        "multiplier (e.g. 0.00392156862745098 for 8-bit)")
    bands: tuple[str, ...] = opt((), "band names to keep, in order (empty = all)")
    jitter_m: tuple[float, ...] = opt((), "[min, max] metres of seeded DHS-style displacement (empty = none)")
    jitter_seed: int = opt(0, "")
    block_px: int = opt(1024, "locations in one block x block tile share one read")
    workers: int = opt(1, "threads reading/resampling blocks")
    on_outside: str = opt("error", "or drop (dropped units are counted)", choices=ON_OUTSIDE)
    nodata: Union[float, str] = opt("file", "file (each file's own nodata value) or a value counted as nodata in "
                                    "every band, e.g. 0 for a 0-DN fill the files do not declare")
    jitter_copies: JitterCopiesConfig = opt(doc="jittered copies of a scale, tiled as <scale>@j<i>",
                                            factory=JitterCopiesConfig)


SSL_SUFFIX = "_ssl"  # an embed encoder named <preset>_ssl is <preset> with the pretrain stage's weights


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining (VICReg) of timm encoder presets on chips cut at random positions of the
    study's scenes, at every tile scale, with reflectance-preserving augmentations. No outcome is read.
    Embed a pretrained encoder by adding ``<preset>_ssl`` to ``embed.encoders``."""

    encoders: tuple[str, ...] = opt((), "timm encoder presets to pretrain (vit/resnet/regnet families)")
    method: str = opt("vicreg", "self-supervised objective", choices=SSL_METHODS)
    positions: int = opt(2048, "random chip positions across the scenes, each tiled at every scale")
    min_valid: float = opt(0.9, "a chip is used when at least this share of its pixels is valid")
    steps: int = opt(500, "optimiser steps on the CPU (the time budget: steps x batch_size images)")
    gpu_steps: int = opt(0, "optimiser steps on a GPU (0: the same as steps)")
    batch_size: int = opt(128, "chips per step (two views each)")
    lr: float = opt(0.001, "peak AdamW learning rate (linear warm-up, cosine decay)")
    weight_decay: float = opt(0.05, "AdamW weight decay")
    projector_dim: int = opt(256, "width of the VICReg expander (discarded after training)")
    augment: tuple[str, ...] = opt(("flip", "crop", "noise", "band_drop"),
                                   "among " + ", ".join(AUGMENTATIONS) + " (rot90 off: scenes are north-up)")
    crop_scale: tuple[float, ...] = opt((0.5, 1.0), "[min, max] area share of the random crop")
    noise_sd: float = opt(0.01, "per-pixel Gaussian noise, reflectance units")
    band_drop: float = opt(0.2, "probability of setting one random band to its mean")
    device: str = opt("auto", "auto (cuda when available), cpu or cuda[:N]")


@dataclass(frozen=True)
class EncoderWeightsConfig:
    """A local checkpoint for an encoder of ``embed.encoders`` (published SSL4EO-L / CLIP weights, or any
    checkpoint of a preset's architecture)."""

    encoder: str = opt(doc="the encoder name as listed in embed.encoders")
    path: str = opt(doc="safetensors or .pt/.pth file, absolute or relative to the params file's folder")


@dataclass(frozen=True)
class EmbedConfig:
    """Encoders run over every scale: batch size, device, and how the chip store is read ahead of the
    encoder (``read_threads`` reader threads, 0 = one per core up to 8; or ``num_workers`` DataLoader
    processes when > 0)."""

    encoders: tuple[str, ...] = opt(("spectral",), "encoder presets (configs/encoders) or families")
    batch_size: int = opt(64, "")
    device: str = opt("auto", "auto (cuda when available), cpu or cuda[:N]")
    num_workers: int = opt(0, "DataLoader processes reading the chip store (0: reader threads)")
    read_threads: int = opt(0, "threads reading chip blocks ahead of the encoder (0: one per core, at most 8)")
    weights: tuple[EncoderWeightsConfig, ...] = opt((), "local checkpoints: [{encoder: NAME, path: FILE}] (no "
                                                    "downloads)")


@dataclass(frozen=True)
class EncoderPcaConfig:
    """Per-encoder PCA before joining, overriding ``features.pca`` for that encoder (e.g. to keep a learned
    encoder's many weak columns from outnumbering spectral statistics among a forest's split candidates)."""

    encoder: str = opt(doc="the encoder name as listed in features.encoders")
    pca: int = opt(doc="principal components kept per scale (0 = none)")


@dataclass(frozen=True)
class FeaturesConfig:
    """Multi-scale Concatenation: encoders and scale sets to join, covariates, and the optional per-scale
    reduction before joining (standardise columns; PCA to ``pca`` components; 0 = none), fitted on the
    locations' embeddings without outcomes."""

    encoders: tuple[str, ...] = opt(("spectral",), "encoders whose embeddings are joined")
    scale_sets: tuple[str, ...] = opt(("singles", "all"), "singles, pairs, all, or explicit a+b")
    covariates: bool = opt(True, "append the pre-treatment covariates")
    standardize: bool = opt(False, "per-scale standardisation before joining")
    pca: int = opt(0, "per-scale PCA components before joining (0 = none)")
    encoder_pca: tuple[EncoderPcaConfig, ...] = opt((), "per-encoder override of pca: [{encoder: NAME, pca: K}]")
    jitter: str = opt("none", "how jittered copies of a scale join it", choices=JITTER_JOINS)


@dataclass(frozen=True)
class CateConfig:
    """Cross-fitted CATE estimation (:class:`pipeline.estimate.cate.CausalForestCATE`)."""

    learner: str = opt("causal_forest", "or dr_forest (econml ForestDRLearner)", choices=LEARNERS)
    folds: int = opt(5, "cross-fitting folds, grouped by cluster")
    n_estimators: int = opt(200, "trees of the final forest (a multiple of 4)")
    min_samples_leaf: int = opt(5, "smallest leaf of the final forest (grf's min.node.size)")
    mtry: Union[int, str] = opt("grf", "features tried per split: grf (min(ceil(sqrt(p)) + 20, p), grf's default), "
                                "all, or a number")
    max_samples: float = opt(0.45, "subsample fraction, at most 0.5 (forest inference)")
    nuisance_trees: int = opt(100, "trees of the outcome model")
    propensity: Union[float, str] = opt(0.5, "the known assignment probability, share (out-of-fold treated "
                                        "share) or estimate (out-of-fold logistic model)")
    dr_reference: str = opt("all", "scale set whose CATEs and nuisances form the DR scores")
    n_jobs: int = opt(-1, "threads (-1: all cores)")
    shared_nuisance: bool = opt(True, "true: fit outcome/propensity models once per fold on the reference set's "
                                "features and reuse them in every set; false: per set")
    linear_correction: str = opt("auto", "ridge: a ridge R-learner index before the forest; auto: ridge or none "
                                 "chosen per fold on held-out clusters (dr_forest: none)", choices=LINEAR_CORRECTIONS)
    forest: str = opt("compiled", "the causal forest's builder: compiled (the project's, grf's split rule) or econml "
                      "(econml's CausalForest, the reference)", choices=FORESTS)


@dataclass(frozen=True)
class EvaluateConfig:
    """RATE evaluation: targets, bootstrap replicates, TOC grid and the reference set of paired tests."""

    targets: tuple[str, ...] = opt(("AUTOC", "QINI"), "AUTOC and/or QINI")
    n_boot: int = opt(200, "half-sample bootstrap replicates")
    q_grid: int = opt(20, "TOC grid points")
    reference_set: str = opt("all", "set compared with the best single scale")


@dataclass(frozen=True)
class ScalingConfig:
    """Scaling-strategy study: encoder presets to grow, strategies, FLOPs factors, timing options."""

    bases: tuple[str, ...] = opt(("vit_scaling_base", "resnet_scaling_base"), "presets in configs/encoders/")
    strategies: tuple[str, ...] = opt(tuple(STRATEGIES), "among " + ", ".join(STRATEGIES))
    factors: tuple[float, ...] = opt((1.0, 2.0, 4.0, 8.0), "FLOPs factors, including 1 (add 16.0 on a GPU)")
    in_chans: int = opt(6, "")
    batch_size: int = opt(32, "")
    repeats: int = opt(5, "timed batches per model")
    timing: bool = opt(True, "")
    device: str = opt("auto", "")


@dataclass(frozen=True)
class QualityConfig:
    """Scaling strategies measured on quality: every scaled encoder is pretrained (VICReg) with the same number
    of images seen on chips of a simulated texture-design scene, then scored by a cross-validated linear probe
    on targets that use no trial outcome (land-cover fractions and strip orientation of a chip; the
    compactness of the built-up pixels around a village)."""

    bases: tuple[str, ...] = opt(("vit_tiny",), "encoder presets to grow on the CPU (vit/resnet families)")
    gpu_bases: tuple[str, ...] = opt(("vit_scaling_base", "resnet_scaling_base"), "presets to grow on a GPU")
    strategies: tuple[str, ...] = opt(("d", "w", "r", "dw", "dwr", "dWr"), "among " + ", ".join(STRATEGIES))
    factors: tuple[float, ...] = opt((1.0, 2.0, 4.0), "FLOPs factors on the CPU, including 1 (the base)")
    gpu_factors: tuple[float, ...] = opt((1.0, 2.0, 4.0, 8.0), "FLOPs factors on a GPU, including 1")
    scene_px: int = opt(512, "side of the simulated texture-design scene, pixels of 30 m")
    n_villages: int = opt(200, "villages of the scene (fine probe: built-up compactness around each)")
    coarse_px: int = opt(64, "coarse chip window, native pixels (64 px = 1.92 km)")
    fine_px: int = opt(16, "fine chip window around villages, native pixels (16 px = 480 m)")
    train_chips: int = opt(2048, "pretraining chips per window size, at random positions")
    probe_chips: int = opt(1024, "coarse probe chips at other random positions")
    steps: int = opt(150, "optimiser steps on the CPU (images seen = steps x batch_size, equal for every model)")
    gpu_steps: int = opt(0, "optimiser steps on a GPU (0: the same as steps)")
    batch_size: int = opt(64, "chips per step (two views each)")
    lr: float = opt(0.001, "peak AdamW learning rate")
    probe_folds: int = opt(5, "cross-validation folds of the linear probe")
    seeds: tuple[int, ...] = opt((0,), "pretraining seeds per model (errors averaged; their spread reported)")
    device: str = opt("auto", "auto (cuda when available), cpu or cuda[:N]")


@dataclass(frozen=True)
class ExtrapolateConfig:
    """Scales available at locations without units, for transportability predictions."""

    scales: tuple[str, ...] = opt((), "scales imaged at the new locations")


@dataclass(frozen=True)
class ComputeConfig:
    """Where tiling, embedding and the forests of the cate stage run: ``synchronous`` (default), ``local`` (a
    LocalCluster of ``workers`` processes started and stopped by the stage) or the address of a Dask scheduler
    (``tcp://host:8786``)."""

    scheduler: str = opt("synchronous", "or local (a LocalCluster started by the stage) or tcp://host:8786")
    workers: int = opt(2, "LocalCluster worker processes")


@dataclass(frozen=True)
class Config:
    """One study's validated, frozen parameters (``params.yaml``)."""

    seed: int = opt(0, "seed of every random choice")
    data: DataConfig = opt(doc="a real study's inputs (empty: the simulation)", factory=DataConfig)
    simulate: SimulateConfig = opt(doc="the simulated study", factory=SimulateConfig)
    tile: TileConfig = opt(doc="chips around every location", factory=TileConfig)
    pretrain: PretrainConfig = opt(doc="self-supervised encoders from the study's imagery", factory=PretrainConfig)
    embed: EmbedConfig = opt(doc="encoders", factory=EmbedConfig)
    features: FeaturesConfig = opt(doc="Multi-scale Concatenation", factory=FeaturesConfig)
    cate: CateConfig = opt(doc="cross-fitted causal forests", factory=CateConfig)
    evaluate: EvaluateConfig = opt(doc="RATE and inference", factory=EvaluateConfig)
    scaling: ScalingConfig = opt(doc="the scaling-strategy study", factory=ScalingConfig)
    quality: QualityConfig = opt(doc="the scaling study's quality part (probe error against compute)",
                                 factory=QualityConfig)
    compute: ComputeConfig = opt(doc="where tiling, embedding and the forests run", factory=ComputeConfig)
    extrapolate: ExtrapolateConfig = opt(doc="predictions at locations without units", factory=ExtrapolateConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}", f"a mapping of {_type_name(tp)} keys",
                              f"{type(value).__name__} {value!r}", f"write `{key}:` as a mapping")
        return _build(tp, value, key, source)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}", "a list", f"{type(value).__name__} {value!r}",
                              f"write `{key}` as a YAML list, e.g. [{value!r}]")
        return tuple(_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin is Union:
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key}", " or ".join(_type_name(t) for t in typing.get_args(tp)),
                          repr(value), "see the documented params in README.md")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}", "true or false", repr(value), "use true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}", "an integer", repr(value), "write a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}", "a number", repr(value), "write a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}", "a string", repr(value), "quote the value")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # programming error, not user input


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: {full}", f"one of the known keys of `{prefix or 'top level'}`",
                              f"unknown key {key!r}", f"remove or rename it ({hint})")
        kwargs[key] = _coerce(value, hints[key], full, source)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in kwargs]
    if missing:
        raise ConfigError(f"{source}: {prefix}", f"keys {', '.join(missing)}", "them missing",
                          f"add {', '.join(missing)} under `{prefix}`")
    return cls(**kwargs)


def _check_choices(obj: Any, prefix: str, source: str) -> None:
    """Every field declared with ``choices`` holds one of them (nested sections included)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            raise ConfigError(f"{source}: {key}", f"one of {', '.join(choices)}", repr(value),
                              f"use {close[0]}" if close else "pick one of them")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key, source)


def _check_ranges(cfg: Config, source: str) -> None:
    def bad(key: str, expected: str, got: Any, fix: str) -> None:
        raise ConfigError(f"{source}: {key}", expected, repr(got), fix)

    _check_choices(cfg, "", source)

    s = cfg.simulate
    if s.scene_px < 64:
        bad("simulate.scene_px", "at least 64", s.scene_px, "make the scene larger")
    if s.pixel_m <= 0:
        bad("simulate.pixel_m", "a positive pixel size in metres", s.pixel_m, "use e.g. 30")
    if s.n_locations < 4:
        bad("simulate.n_locations", "at least 4 locations", s.n_locations, "raise it")
    if not 1 <= s.units_min <= s.units_max:
        bad("simulate.units_min/units_max", "1 <= units_min <= units_max", (s.units_min, s.units_max),
            "order the bounds")
    if not 0 < s.treated_share < 1:
        bad("simulate.treated_share", "a share strictly between 0 and 1", s.treated_share, "use e.g. 0.5")
    names = [sc.name for sc in cfg.tile.scales]
    if len(set(names)) != len(names):
        bad("tile.scales", "unique scale names", names, "rename the duplicated scale")
    for i, sc in enumerate(cfg.tile.scales):
        if sc.size_m <= 0:
            bad(f"tile.scales[{i}].size_m", "a positive window size in metres", sc.size_m,
                "give the window width in metres, e.g. 960")
        if sc.px <= 0:
            bad(f"tile.scales[{i}].px", "a positive output size in pixels", sc.px, "use e.g. 32")
        if not SCALE_NAME.fullmatch(sc.name):
            bad(f"tile.scales[{i}].name", "a name of letters, digits, '_', '-' or '.' not starting with '.' or '-' "
                "(it names folders and Zarr arrays; '+' joins scale sets and '@' marks jittered copies)", sc.name,
                "rename it, e.g. s960m")
    d = cfg.data
    if d.outcome_difference and len(d.outcome_difference) != 2:
        bad("data.outcome_difference", "[endline column, baseline column]", list(d.outcome_difference),
            "give exactly two columns")
    if d.locations and not d.location_key:
        bad("data.location_key", "the column joining units to the locations file", "nothing",
            "name the shared column, e.g. village_id")
    bad_cov = sorted(set(d.covariates) & set(d.post_treatment))
    if bad_cov:
        bad("data.covariates", "pre-treatment covariates only",
            f"{bad_cov}, declared post-treatment in data.post_treatment",
            f"remove {bad_cov} from data.covariates: they are (functions of) the treatment")
    t = cfg.tile
    if isinstance(t.radiometry, str) and t.radiometry not in RADIOMETRY_MODES:
        bad("tile.radiometry", "'auto', 'none', 'l2' or a positive DN multiplier", t.radiometry, "use auto")
    if isinstance(t.nodata, str) and t.nodata != "file":
        bad("tile.nodata", "'file' or a number (the DN counted as nodata)", t.nodata, "e.g. 0, or file")
    if isinstance(t.radiometry, float) and t.radiometry <= 0:
        bad("tile.radiometry", "a positive DN multiplier", t.radiometry, "e.g. 0.00392156862745098 for 8-bit")
    if t.jitter_m and (len(t.jitter_m) != 2 or not 0 <= t.jitter_m[0] <= t.jitter_m[1]):
        bad("tile.jitter_m", "[min, max] metres with 0 <= min <= max", list(t.jitter_m), "e.g. [0, 2000]")
    jc = t.jitter_copies
    if jc.copies < 0 or (jc.scales and jc.copies < 1):
        bad("tile.jitter_copies.copies", "a positive number of copies for the listed scales", jc.copies, "e.g. 4")
    if len(jc.jitter_m) != 2 or not 0 <= jc.jitter_m[0] <= jc.jitter_m[1]:
        bad("tile.jitter_copies.jitter_m", "[min, max] metres with 0 <= min <= max", list(jc.jitter_m), "e.g. [0, 300]")
    if t.block_px < 64:
        bad("tile.block_px", "at least 64 pixels", t.block_px, "use 1024")
    if t.workers < 1:
        bad("tile.workers", "at least 1 thread", t.workers, "use 1 or the number of cores")
    pt = cfg.pretrain
    for key, value, low in (("positions", pt.positions, 1), ("steps", pt.steps, 1), ("gpu_steps", pt.gpu_steps, 0),
                            ("batch_size", pt.batch_size, 2), ("projector_dim", pt.projector_dim, 2)):
        if value < low:
            bad(f"pretrain.{key}", f"an integer >= {low}", value, f"use at least {low}")
    if not 0 < pt.min_valid <= 1:
        bad("pretrain.min_valid", "a share in (0, 1]", pt.min_valid, "e.g. 0.9")
    if pt.lr <= 0 or pt.weight_decay < 0 or pt.noise_sd < 0 or not 0 <= pt.band_drop <= 1:
        bad("pretrain.lr/weight_decay/noise_sd/band_drop", "lr > 0, weight_decay >= 0, noise_sd >= 0, "
            "0 <= band_drop <= 1", (pt.lr, pt.weight_decay, pt.noise_sd, pt.band_drop), "fix the value")
    unknown_aug = [a for a in pt.augment if a not in AUGMENTATIONS]
    if unknown_aug:
        bad("pretrain.augment", f"names among {', '.join(AUGMENTATIONS)}", unknown_aug, "remove or rename them")
    if len(pt.crop_scale) != 2 or not 0 < pt.crop_scale[0] <= pt.crop_scale[1] <= 1:
        bad("pretrain.crop_scale", "[min, max] with 0 < min <= max <= 1", list(pt.crop_scale), "e.g. [0.5, 1.0]")
    for i, w in enumerate(cfg.embed.weights):
        if w.encoder not in cfg.embed.encoders:
            bad(f"embed.weights[{i}].encoder", f"one of embed.encoders {list(cfg.embed.encoders)}", w.encoder,
                "list the encoder under embed.encoders, or fix its name")
        if w.encoder.endswith(SSL_SUFFIX):
            bad(f"embed.weights[{i}].encoder", "an encoder whose weights do not come from the pretrain stage",
                w.encoder, "remove the entry: <preset>_ssl loads out/pretrain")
    for i, name in enumerate(cfg.embed.encoders):
        if name.endswith(SSL_SUFFIX) and name[: -len(SSL_SUFFIX)] not in pt.encoders:
            base = name[: -len(SSL_SUFFIX)]
            bad(f"embed.encoders[{i}]", f"{name!r} to name a preset pretrained by the pretrain stage "
                f"(pretrain.encoders holds {list(pt.encoders)})", name,
                f"add {base} to pretrain.encoders, or embed {base} (random weights)")
    if cfg.embed.batch_size < 1:
        bad("embed.batch_size", "a positive integer", cfg.embed.batch_size, "use e.g. 64")
    if cfg.embed.num_workers < 0:
        bad("embed.num_workers", "0 (reader threads) or a number of DataLoader processes", cfg.embed.num_workers,
            "use 0")
    if cfg.embed.read_threads < 0:
        bad("embed.read_threads", "0 (one per core, at most 8) or a number of threads", cfg.embed.read_threads,
            "use 0")
    c = cfg.cate
    if c.linear_correction == "ridge" and c.learner != "causal_forest":
        bad("cate.linear_correction", "'none' or 'auto' with cate.learner dr_forest (the correction is a causal "
            "forest final stage)", c.linear_correction, "use learner causal_forest or linear_correction auto")
    if c.folds < 2:
        bad("cate.folds", "at least 2 folds", c.folds, "use e.g. 5")
    if c.n_estimators < 4 or c.n_estimators % 4:
        bad("cate.n_estimators", "a positive multiple of 4 (econml's forests grow trees in groups of 4)",
            c.n_estimators, f"use {max(4, 4 * round(c.n_estimators / 4))}")
    if not 0 < c.max_samples <= 0.5:
        bad("cate.max_samples", "a fraction in (0, 0.5] (required by forest inference)", c.max_samples,
            "use e.g. 0.45")
    if isinstance(c.mtry, str) and c.mtry not in MTRY_RULES:
        bad("cate.mtry", f"one of {', '.join(MTRY_RULES)} or a positive number of features", c.mtry, "e.g. grf")
    if isinstance(c.mtry, int) and c.mtry < 1:
        bad("cate.mtry", "at least 1 feature per split", c.mtry, "e.g. grf")
    if isinstance(c.propensity, str) and c.propensity not in PROPENSITY_MODES:
        bad("cate.propensity", "a known assignment probability in (0, 1), 'share' (out-of-fold treated "
            "share) or 'estimate' (out-of-fold logistic model)", c.propensity, "write the design probability")
    if isinstance(c.propensity, float) and not 0 < c.propensity < 1:
        bad("cate.propensity", "a probability strictly between 0 and 1", c.propensity, "e.g. 0.5")
    if cfg.features.pca < 0:
        bad("features.pca", "0 (no PCA) or a positive number of components", cfg.features.pca, "use e.g. 8")
    for i, ep in enumerate(cfg.features.encoder_pca):
        if [e.encoder for e in cfg.features.encoder_pca[:i]].count(ep.encoder):
            bad(f"features.encoder_pca[{i}].encoder", "each encoder at most once", ep.encoder,
                "remove the repeated entry")
        if ep.encoder not in cfg.features.encoders:
            bad(f"features.encoder_pca[{i}].encoder", f"one of features.encoders {list(cfg.features.encoders)}",
                ep.encoder, "list the encoder under features.encoders or remove the entry")
        if ep.pca < 0:
            bad(f"features.encoder_pca[{i}].pca", "0 (no PCA) or a positive number of components", ep.pca,
                "use e.g. 16")
    cp = cfg.compute
    if cp.scheduler not in ("synchronous", "local") and "://" not in cp.scheduler:
        bad("compute.scheduler", "synchronous, local or a scheduler address like tcp://host:8786", cp.scheduler,
            "pick one")
    if cp.workers < 1:
        bad("compute.workers", "at least 1 worker", cp.workers, "use e.g. 2")
    sc = cfg.scaling
    if any(f <= 0 for f in sc.factors) or 1.0 not in sc.factors:
        bad("scaling.factors", "positive FLOPs factors including 1 (the base)", list(sc.factors), "e.g. [1, 2, 4, 8]")
    for st in sc.strategies:
        if st not in STRATEGIES:
            bad("scaling.strategies", f"names among {', '.join(STRATEGIES)}", st, "fix the name")
    q = cfg.quality
    for key, factors in (("factors", q.factors), ("gpu_factors", q.gpu_factors)):
        if any(f <= 0 for f in factors) or 1.0 not in factors:
            bad(f"quality.{key}", "positive FLOPs factors including 1 (the base)", list(factors), "e.g. [1, 2, 4]")
    for st in q.strategies:
        if st not in STRATEGIES:
            bad("quality.strategies", f"names among {', '.join(STRATEGIES)}", st, "fix the name")
    if not (0 < q.fine_px <= q.scene_px // 4 and 0 < q.coarse_px <= q.scene_px // 4):
        bad("quality.coarse_px/fine_px", f"windows of 1 to scene_px / 4 ({q.scene_px // 4}) pixels",
            [q.coarse_px, q.fine_px], "lower the windows or enlarge quality.scene_px")
    if q.steps < 1 or q.batch_size < 2 or q.gpu_steps < 0:
        bad("quality.steps/batch_size", "steps >= 1, gpu_steps >= 0 and batch_size >= 2",
            [q.steps, q.gpu_steps, q.batch_size], "raise them")
    if q.probe_folds < 2 or not q.seeds:
        bad("quality.probe_folds/seeds", "at least 2 folds and one seed", [q.probe_folds, list(q.seeds)],
            "use probe_folds: 5, seeds: [0]")
    if q.train_chips < q.batch_size or q.probe_chips < 4 * q.probe_folds or q.n_villages < 4 * q.probe_folds:
        bad("quality.train_chips/probe_chips/n_villages",
            "train_chips >= batch_size and at least 4 probe chips and villages per probe fold",
            [q.train_chips, q.probe_chips, q.n_villages], "raise them")
    for t in cfg.evaluate.targets:
        if t not in TARGETS:
            bad("evaluate.targets", " and/or ".join(TARGETS), t, f"use {' or '.join(TARGETS)}")
    if cfg.evaluate.n_boot < 2:
        bad("evaluate.n_boot", "at least 2 bootstrap replicates", cfg.evaluate.n_boot, "use 200")
    if cfg.evaluate.q_grid < 1:
        bad("evaluate.q_grid", "a positive number of TOC grid points", cfg.evaluate.q_grid, "use 20")


def check_yaml_size(data: Any, source: str) -> None:
    """Refuse loaded YAML that aliases expand into more than :data:`MAX_YAML_VALUES` values or nest deeper
    than :data:`MAX_YAML_DEPTH` (a few hundred bytes of ``&a [*a, *a, ...]`` reach billions of values; a
    self-referencing alias never ends), before anything walks or prints it."""
    count = 0
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
            what = (f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded" if count > MAX_YAML_VALUES
                    else f"values nested more than {MAX_YAML_DEPTH} levels deep (or an alias that refers to itself)")
            raise ConfigError(source, "a params file of ordinary size", what,
                              "write the values out instead of nesting YAML aliases (&name / *name)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value.keys())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def config_from_dict(data: dict | None, source: str = "params") -> Config:
    """Build a validated :class:`Config` from a mapping (e.g. loaded YAML)."""
    check_yaml_size(data, source)
    cfg = _build(Config, data or {}, "", source)
    _check_ranges(cfg, source)
    return cfg


def load_config(path: str | os.PathLike) -> Config:
    """Load ``params.yaml`` safely and validate it.

    Raises:
        ConfigError: the file is missing, is not YAML, or has unknown/invalid keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "a params YAML file", "no such file",
                          "run in the study folder, give the folder to `mscate run` / `mscate report`, or pass "
                          "--params PATH to a stage")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "valid YAML", f"a parse error ({exc})", "fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "a readable UTF-8 params file", f"{type(exc).__name__} ({exc})",
                          "check the file's permissions and encoding") from None
    check_yaml_size(data, str(path))
    if data is not None and not isinstance(data, dict):
        raise ConfigError(str(path), "a mapping at the top level", type(data).__name__, "see params.yaml")
    return config_from_dict(data, source=str(path))


def _flow(value: Any) -> str:
    """A value in YAML flow style (lists and mappings on one line)."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        value = [_plain(v) for v in value]
    return yaml.safe_dump([_plain(value)], default_flow_style=True, sort_keys=False, width=10_000).strip()[1:-1]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _render(obj: Any, indent: int) -> list[str]:
    lines = []
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        choices = f.metadata.get("choices")
        if choices:
            doc = f"{doc} [{' | '.join(choices)}]" if doc else f"[{' | '.join(choices)}]"
        comment = f"  # {doc}" if doc else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{comment}")
            lines += _render(value, indent + 2)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{pad}{f.name}:{comment}")
            lines += [f"{pad}  - {_flow(v)}" for v in value]
        else:
            lines.append(f"{pad}{f.name}: {_flow(value)}{comment}")
    return lines


def render_params(data: dict | None = None, sections: Sequence[str] | None = None, header: str = "") -> str:
    """A complete, commented params file: every key of the schema with its default (the defaults live only
    in the dataclasses above), overridden by ``data``, for the top-level ``sections`` (default: all).

    The text loads back into the same :class:`Config` (validated before it is returned).

    Raises:
        ConfigError: when ``data`` is not a valid params mapping.
    """
    cfg = config_from_dict(data, source="params")
    names = [f.name for f in dataclasses.fields(Config)]
    keep = list(sections) if sections is not None else names
    unknown = [s for s in keep if s not in names]
    if unknown:
        raise ConfigError("sections", f"top-level params sections among {names}", repr(unknown), "fix the names")
    blocks = []
    for f in dataclasses.fields(Config):
        if f.name not in keep:
            continue
        value = getattr(cfg, f.name)
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(value):
            blocks.append("\n".join([f"{f.name}:" + (f"  # {doc}" if doc else "")] + _render(value, 2)))
        else:
            blocks.append(f"{f.name}: {_flow(value)}" + (f"  # {doc}" if doc else ""))
    text = "".join(f"# {line}\n" for line in header.splitlines()) + "\n\n".join(blocks) + "\n"
    reloaded = config_from_dict(yaml.safe_load(text), source="rendered params")
    for name in keep:  # the text says what the config says
        if getattr(reloaded, name) != getattr(cfg, name):
            raise AssertionError(f"rendered params section {name!r} does not round-trip")  # programming error
    return text
