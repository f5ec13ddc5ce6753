"""Validated, frozen run configuration.

``params.yaml`` is loaded with ``yaml.safe_load`` and turned into frozen dataclasses. Unknown keys are
errors that name the key and list close matches; wrong types and out-of-range values name the key, the
expected value and the fix. Each stage reads only its own section(s) (declared in ``dvc.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError

RESAMPLING_METHODS = ("average", "nearest")


@dataclass(frozen=True)
class SimulateConfig:
    """Synthetic Landsat-like scene and cluster-randomized trial with a known CATE."""

    scene_px: int = 1024
    pixel_m: float = 30.0
    epsg: int = 32636
    origin_x: float = 420000.0
    origin_y: float = 180000.0
    n_locations: int = 300
    units_min: int = 4
    units_max: int = 8
    treated_share: float = 0.5
    noise_sd: float = 1.0
    tau_base: float = 1.0
    tau_fine: float = 0.8
    tau_coarse: float = 0.8
    fine_window_m: float = 240.0
    coarse_window_m: float = 3840.0


@dataclass(frozen=True)
class ColumnsConfig:
    """Names of the required columns in the user's units file."""

    unit_id: str = "unit_id"
    location_id: str = "location_id"
    cluster_id: str = "cluster_id"
    W: str = "W"
    Y: str = "Y"
    lon: str = "lon"
    lat: str = "lat"


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

    root: str = ""
    root_env: str = ""
    units: str = ""
    locations: str = ""
    location_key: str = ""
    scenes: tuple[str, ...] = ()
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    covariates: tuple[str, ...] = ()
    post_treatment: tuple[str, ...] = ()
    treated_codes: tuple[str, ...] = ()
    control_codes: tuple[str, ...] = ()
    outcome_difference: tuple[str, ...] = ()
    missing_outcome: str = "error"
    missing_covariates: str = "error"
    source: str = ""


@dataclass(frozen=True)
class ScaleConfig:
    """One spatial scale: a square window ``size_m`` metres wide, resampled to ``px`` x ``px`` pixels."""

    name: str
    size_m: float
    px: int


@dataclass(frozen=True)
class JitterCopiesConfig:
    """Jittered copies of some scales (Multi-scale Concatenation's jitter variant): ``copies`` windows per
    location displaced by a seeded distance in ``jitter_m`` metres, tiled as scales ``<scale>@j<i>``."""

    scales: tuple[str, ...] = ()
    copies: int = 0
    jitter_m: tuple[float, ...] = (0.0, 0.0)
    seed: int = 0


@dataclass(frozen=True)
class TileConfig:
    """Tiling: scales, resampling, radiometry ('auto', 'none', 'l2' or a DN multiplier), band selection by
    name (empty = all), optional seeded location jitter [min, max] in metres, read-block size, threads,
    and the policy for locations outside every scene ('error' or 'drop')."""

    scales: tuple[ScaleConfig, ...] = ()
    resampling: str = "average"
    radiometry: Union[float, str] = "auto"
    bands: tuple[str, ...] = ()
    jitter_m: tuple[float, ...] = ()
    jitter_seed: int = 0
    block_px: int = 1024
    workers: int = 1
    on_outside: str = "error"
    jitter_copies: JitterCopiesConfig = field(default_factory=JitterCopiesConfig)


@dataclass(frozen=True)
class EmbedConfig:
    """Encoders run over every scale: batch size, device, and how the chip store is read ahead of the
    encoder (``read_threads`` reader threads, 0 = one per core up to 8; or ``num_workers`` DataLoader
    processes when > 0)."""

    encoders: tuple[str, ...] = ("spectral",)
    batch_size: int = 64
    device: str = "auto"
    num_workers: int = 0
    read_threads: int = 0


@dataclass(frozen=True)
class FeaturesConfig:
    """Multi-scale Concatenation: encoders and scale sets to join, covariates, and the optional per-scale
    reduction before joining (standardise columns; PCA to ``pca`` components; 0 = none), fitted on the
    locations' embeddings without outcomes."""

    encoders: tuple[str, ...] = ("spectral",)
    scale_sets: tuple[str, ...] = ("singles", "all")
    covariates: bool = True
    standardize: bool = False
    pca: int = 0
    jitter: str = "none"


@dataclass(frozen=True)
class CateConfig:
    learner: str = "causal_forest"
    folds: int = 5
    n_estimators: int = 200
    min_samples_leaf: int = 5
    max_samples: float = 0.45
    nuisance_trees: int = 100
    propensity: Union[float, str] = 0.5
    dr_reference: str = "all"
    n_jobs: int = -1
    shared_nuisance: bool = False
    linear_correction: str = "none"


@dataclass(frozen=True)
class EvaluateConfig:
    targets: tuple[str, ...] = ("AUTOC", "QINI")
    n_boot: int = 200
    q_grid: int = 20
    reference_set: str = "all"


@dataclass(frozen=True)
class ScalingConfig:
    """Scaling-strategy study: encoder presets to grow, strategies, FLOPs factors, timing options."""

    bases: tuple[str, ...] = ("vit_scaling_base", "resnet_scaling_base")
    strategies: tuple[str, ...] = ("d", "w", "r", "dw", "dr", "wr", "dwr", "dWr")
    factors: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    in_chans: int = 6
    batch_size: int = 32
    repeats: int = 5
    timing: bool = True
    device: str = "auto"


@dataclass(frozen=True)
class ExtrapolateConfig:
    """Scales available at locations without units, for transportability predictions."""

    scales: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComputeConfig:
    """Where tiling and embedding run: ``synchronous`` (default), ``local`` (a LocalCluster of ``workers``
    processes started and stopped by the stage) or the address of a Dask scheduler (``tcp://host:8786``)."""

    scheduler: str = "synchronous"
    workers: int = 2


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    cate: CateConfig = field(default_factory=CateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    extrapolate: ExtrapolateConfig = field(default_factory=ExtrapolateConfig)


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
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(exc)
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


def _check_ranges(cfg: Config, source: str) -> None:
    def bad(key: str, expected: str, got: Any, fix: str) -> None:
        raise ConfigError(f"{source}: {key}", expected, repr(got), fix)

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
        if not sc.name or "+" in sc.name or "/" in sc.name:
            bad(f"tile.scales[{i}].name", "a non-empty name without '+' or '/'", sc.name, "rename it")
    d = cfg.data
    if d.missing_outcome not in ("error", "drop"):
        bad("data.missing_outcome", "'error' or 'drop'", d.missing_outcome, "pick one")
    if d.missing_covariates not in ("error", "impute"):
        bad("data.missing_covariates", "'error' or 'impute'", d.missing_covariates, "pick one")
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
    if isinstance(t.radiometry, str) and t.radiometry not in ("auto", "none", "l2"):
        bad("tile.radiometry", "'auto', 'none', 'l2' or a positive DN multiplier", t.radiometry, "use auto")
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
    if t.on_outside not in ("error", "drop"):
        bad("tile.on_outside", "'error' or 'drop'", t.on_outside, "pick one")
    if cfg.tile.resampling not in RESAMPLING_METHODS:
        bad("tile.resampling", f"one of {RESAMPLING_METHODS}", cfg.tile.resampling, "pick one of them")
    if cfg.embed.batch_size < 1:
        bad("embed.batch_size", "a positive integer", cfg.embed.batch_size, "use e.g. 64")
    if cfg.embed.num_workers < 0:
        bad("embed.num_workers", "0 (reader threads) or a number of DataLoader processes", cfg.embed.num_workers,
            "use 0")
    if cfg.embed.read_threads < 0:
        bad("embed.read_threads", "0 (one per core, at most 8) or a number of threads", cfg.embed.read_threads,
            "use 0")
    c = cfg.cate
    if c.learner not in ("causal_forest", "dr_forest"):
        bad("cate.learner", "'causal_forest' or 'dr_forest'", c.learner, "pick one")
    if c.linear_correction not in ("none", "ridge", "auto"):
        bad("cate.linear_correction", "'none', 'ridge' or 'auto'", c.linear_correction, "pick one")
    if c.linear_correction != "none" and c.learner != "causal_forest":
        bad("cate.linear_correction", "'none' with cate.learner dr_forest (the correction is a causal forest "
            "final stage)", c.linear_correction, "use learner causal_forest or linear_correction none")
    if c.folds < 2:
        bad("cate.folds", "at least 2 folds", c.folds, "use e.g. 5")
    if c.n_estimators < 4 or c.n_estimators % 4:
        bad("cate.n_estimators", "a positive multiple of 4 (econml's forests grow trees in groups of 4)",
            c.n_estimators, f"use {max(4, 4 * round(c.n_estimators / 4))}")
    if not 0 < c.max_samples <= 0.5:
        bad("cate.max_samples", "a fraction in (0, 0.5] (required by forest inference)", c.max_samples,
            "use e.g. 0.45")
    if isinstance(c.propensity, str) and c.propensity not in ("estimate", "share"):
        bad("cate.propensity", "a known assignment probability in (0, 1), 'share' (out-of-fold treated "
            "share) or 'estimate' (out-of-fold logistic model)", c.propensity, "write the design probability")
    if isinstance(c.propensity, float) and not 0 < c.propensity < 1:
        bad("cate.propensity", "a probability strictly between 0 and 1", c.propensity, "e.g. 0.5")
    if cfg.features.jitter not in ("none", "mean", "concat"):
        bad("features.jitter", "none, mean or concat (how jittered copies of a scale join it)", cfg.features.jitter,
            "pick one")
    if cfg.features.pca < 0:
        bad("features.pca", "0 (no PCA) or a positive number of components", cfg.features.pca, "use e.g. 8")
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
        if st not in ("d", "w", "r", "dw", "dr", "wr", "dwr", "dWr"):
            bad("scaling.strategies", "names among d, w, r, dw, dr, wr, dwr, dWr", st, "fix the name")
    for t in cfg.evaluate.targets:
        if t not in ("AUTOC", "QINI"):
            bad("evaluate.targets", "AUTOC and/or QINI", t, "use AUTOC or QINI")
    if cfg.evaluate.n_boot < 2:
        bad("evaluate.n_boot", "at least 2 bootstrap replicates", cfg.evaluate.n_boot, "use 200")
    if cfg.evaluate.q_grid < 1:
        bad("evaluate.q_grid", "a positive number of TOC grid points", cfg.evaluate.q_grid, "use 20")


def config_from_dict(data: dict | None, source: str = "params") -> Config:
    """Build a validated :class:`Config` from a mapping (e.g. loaded YAML)."""
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
                          "run from the study folder or pass --params PATH")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "valid YAML", f"a parse error ({exc})", "fix the YAML syntax") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(str(path), "a mapping at the top level", type(data).__name__, "see params.yaml")
    return config_from_dict(data, source=str(path))
