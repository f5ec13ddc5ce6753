"""Trial units: schema, validation and GeoParquet I/O.

A units table has one row per trial unit with columns ``unit_id``, ``location_id`` (the place that is tiled;
several units may share one), ``cluster_id`` (the unit of randomization), ``W`` (binary treatment 0/1), ``Y``
(numeric outcome), point ``geometry`` in EPSG:4326 and any number of pre-treatment covariates whose names
start with ``x_``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from .artifacts import missing_reason, write_with
from .errors import UnitsError

REQUIRED = ("unit_id", "location_id", "cluster_id", "W", "Y")
COVARIATE_PREFIX = "x_"


def covariate_columns(units: pd.DataFrame) -> list[str]:
    """Names of the pre-treatment covariate columns (prefix ``x_``), in table order."""
    return [c for c in units.columns if c.startswith(COVARIATE_PREFIX)]


def validate_units(units: pd.DataFrame, source: str = "units",
                   post_treatment: Sequence[str] = ()) -> gpd.GeoDataFrame:
    """Check a units table against the contract and return it unchanged (never drops rows).

    Args:
        units: the table (GeoDataFrame with point geometry, or DataFrame with ``lon``/``lat``).
        source: name used in error messages (usually the file path).
        post_treatment: columns that must never be used as covariates.

    Raises:
        UnitsError: naming the column, the number of offending rows and the fix.
    """
    n = len(units)
    if n == 0:
        raise UnitsError(source, "at least one unit row", "an empty table", "check the file is the right one")
    missing = [c for c in REQUIRED if c not in units.columns]
    if missing:
        raise UnitsError(f"{source}: columns", f"columns {', '.join(REQUIRED)}",
                         f"{', '.join(missing)} missing (found {', '.join(map(str, units.columns))})",
                         "rename your columns or map them when loading")
    if not isinstance(units, gpd.GeoDataFrame):
        if not {"lon", "lat"} <= set(units.columns):
            raise UnitsError(f"{source}: geometry", "a geometry column or lon/lat columns",
                             "neither", "add lon and lat in degrees (EPSG:4326)")
        units = gpd.GeoDataFrame(units, geometry=gpd.points_from_xy(units["lon"], units["lat"]), crs=4326)
    dup = units["unit_id"].duplicated(keep=False)
    if dup.any():
        ids = units.loc[dup, "unit_id"].unique()[:5].tolist()
        raise UnitsError(f"{source}: unit_id", "unique unit ids", f"{int(dup.sum())} rows sharing ids (e.g. {ids})",
                         "de-duplicate the table or build a unique id")
    for col in ("location_id", "cluster_id", "W", "Y"):
        bad = units[col].isna()
        if bad.any():
            raise UnitsError(f"{source}: {col}", "no missing values", f"{int(bad.sum())} of {n} rows missing",
                             "fill or remove those rows explicitly (the pipeline never drops units silently)")
    w = units["W"]
    if not pd.api.types.is_numeric_dtype(w) or not set(np.unique(w.to_numpy())) <= {0, 1}:
        vals = pd.unique(w)[:6].tolist()
        raise UnitsError(f"{source}: W", "a binary treatment coded 0/1", f"values {vals}",
                         "recode treatment as 0 (control) / 1 (treated)")
    if w.nunique() < 2:
        raise UnitsError(f"{source}: W", "both treated and control units", f"all units have W={int(w.iloc[0])}",
                         "check the treatment column; RATE needs both arms")
    y = units["Y"]
    if not pd.api.types.is_numeric_dtype(y):
        raise UnitsError(f"{source}: Y", "a numeric outcome", f"dtype {y.dtype}", "convert the outcome to numbers")
    if not np.isfinite(y.to_numpy(dtype=float)).all():
        raise UnitsError(f"{source}: Y", "finite outcomes", "inf values", "remove or fix them")
    if y.nunique() < 2:
        raise UnitsError(f"{source}: Y", "an outcome that varies", "a constant outcome", "check the outcome column")
    for col in covariate_columns(units):
        if col in post_treatment:
            raise UnitsError(f"{source}: {col}", "pre-treatment covariates only",
                             f"{col}, declared post-treatment", f"remove {col} from the covariates")
        if not pd.api.types.is_numeric_dtype(units[col]):
            raise UnitsError(f"{source}: {col}", "numeric covariates", f"dtype {units[col].dtype}",
                             "encode it numerically (e.g. one-hot)")
        n_missing = int(units[col].isna().sum())
        if n_missing:
            raise UnitsError(f"{source}: {col}", "no missing covariate values", f"{n_missing} of {n} missing",
                             "impute them (real studies: data.missing_covariates: impute) or drop the column")
    geom = units.geometry
    xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]) if len(geom) else np.zeros((0, 2))
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise UnitsError(f"{source}: geometry", "finite coordinates", f"{int(bad.sum())} of {n} rows with NaN",
                         "geocode those units or remove them explicitly")
    if units.crs is not None and units.crs.is_geographic:
        out = (np.abs(xy[:, 0]) > 180) | (np.abs(xy[:, 1]) > 90)
        if out.any():
            raise UnitsError(f"{source}: geometry", "lon in [-180, 180] and lat in [-90, 90]",
                             f"{int(out.sum())} rows outside", "check for swapped or projected coordinates")
    n_clusters = units["cluster_id"].nunique()
    if n_clusters < 2:
        raise UnitsError(f"{source}: cluster_id", "at least 2 clusters", f"{n_clusters}",
                         "use the unit of randomization as cluster_id")
    return units


def _pure_assignments(sizes: np.ndarray, n_treated: int) -> int:
    """Number of ways to treat ``n_treated`` draws by treating whole groups of the given sizes (subset sums)."""
    ways = [1] + [0] * n_treated
    for size in sizes:
        for total in range(n_treated, size - 1, -1):
            ways[total] += ways[total - size]
    return ways[n_treated]


LEAK_CHANCE = 1e-3  # a covariate separating the arms this rarely by chance under the randomization is a leak


def check_assignment(units: pd.DataFrame, source: str = "units") -> list[str]:
    """Checks of the treatment assignment that a valid table can still fail; returns warnings.

    * A covariate equal to W, or perfectly predicting it (one threshold, or values that each occur in one arm
      only), is a post-treatment or leaked column: an error when a randomization would produce such a
      separation with probability below :data:`LEAK_CHANCE` (computed over clusters for cluster-level
      assignment), a warning when the trial is too small to tell.
    * Clusters that mix arms while most clusters hold a single arm (a treated unit inside a control cluster):
      the randomization unit is inconsistent; a warning naming them.

    Raises:
        UnitsError: naming the leaked covariate.
    """
    from math import comb

    findings: list[str] = []
    w = units["W"].to_numpy(dtype=np.int64)
    cl = units["cluster_id"].astype(str).to_numpy()
    by = pd.DataFrame({"W": w, "c": cl}).groupby("c")["W"]
    lo, hi, size = by.min(), by.max(), by.size()
    mixed = (lo != hi)
    multi = size >= 2
    if mixed.any() and multi.sum() and mixed[multi].mean() <= 0.2:
        names = mixed[mixed].index[:5].tolist()
        findings.append(f"{source}: {int(mixed.sum())} of {int(multi.sum())} clusters mix treated and control "
                        f"units (e.g. {names}) while the others hold one arm: the unit of randomization looks "
                        "inconsistent; check W and cluster_id (cluster_id must be the unit of randomization)")
    cluster_level = not mixed.any()
    for col in covariate_columns(units):
        x = units[col].to_numpy(dtype=np.float64)
        frame = pd.DataFrame({"x": x, "W": w, "c": cl})
        if cluster_level:  # one draw per cluster: separation is judged over clusters
            if (frame.groupby("c")["x"].nunique() > 1).any():
                per = None  # a unit-level covariate under cluster assignment: the threshold check only
                draws = frame.groupby("c").agg(x_min=("x", "min"), x_max=("x", "max"), W=("W", "first"))
            else:
                per = frame.groupby("c").agg(x=("x", "first"), W=("W", "first"))
                draws = per.assign(x_min=per["x"], x_max=per["x"])
        else:
            per = frame[["x", "W"]]
            draws = per.assign(x_min=per["x"], x_max=per["x"])
        n_draws, n_treated = len(draws), int(draws["W"].sum())
        if n_treated in (0, n_draws):
            continue
        t, c = draws[draws["W"] == 1], draws[draws["W"] == 0]
        if t["x_max"].max() < c["x_min"].min() or c["x_max"].max() < t["x_min"].min():
            what, chance = "separates treated from control units by a threshold", 2 / comb(n_draws, n_treated)
        elif per is not None and (per.groupby("x")["W"].nunique() == 1).all() and per["x"].nunique() < n_draws:
            sizes = per.groupby("x").size().to_numpy()
            what = "takes values that each occur in one arm only"
            chance = _pure_assignments(sizes, n_treated) / comb(n_draws, n_treated)
        else:
            continue
        if np.array_equal(x, w) or np.array_equal(x, 1 - w):
            what = "equals the treatment (or its complement)"
        if chance < LEAK_CHANCE:
            raise UnitsError(f"{source}: {col}", "a pre-treatment covariate (the arms overlap in it)",
                             f"a column that {what}: it predicts W perfectly, which a randomization does with "
                             f"probability {chance:.1g}",
                             "remove it from the covariates (data.covariates / data.post_treatment): it is "
                             "post-treatment or leaks the assignment")
        findings.append(f"{source}: {col} {what}; with {n_draws} {'clusters' if cluster_level else 'units'} a "
                        f"randomization does this with probability {chance:.2g}: check that it is pre-treatment")
    return findings


def write_units(units: gpd.GeoDataFrame, path: str | os.PathLike) -> None:
    """Write a units GeoDataFrame as GeoParquet, atomically."""
    write_with(path, lambda tmp: units.to_parquet(tmp, index=False))


def read_units(path: str | os.PathLike, post_treatment: Sequence[str] = ()) -> gpd.GeoDataFrame:
    """Read and validate a GeoParquet units table."""
    path = Path(path)
    if not path.is_file():
        raise UnitsError(str(path), "a units GeoParquet file", "no such file", "run the prepare stage first")
    units = gpd.read_parquet(path)
    return validate_units(units, source=str(path), post_treatment=post_treatment)


def locations_table(units: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One row per location (sorted by ``location_id``) with its point geometry.

    Raises:
        UnitsError: when units of one location disagree on its coordinates.
    """
    g = units[["location_id", "geometry"]].copy()
    g["_x"] = g.geometry.x
    g["_y"] = g.geometry.y
    spread = g.groupby("location_id")[["_x", "_y"]].agg(lambda s: s.max() - s.min())
    bad = spread[(spread > 1e-9).any(axis=1)]
    if len(bad):
        raise UnitsError("units: geometry", "one coordinate per location_id",
                         f"{len(bad)} locations with differing coordinates (e.g. {bad.index[:3].tolist()})",
                         "give each location a single point, or split it into distinct locations")
    first = g.groupby("location_id", sort=True).first()
    return gpd.GeoDataFrame({"location_id": first.index.to_numpy()},
                            geometry=gpd.points_from_xy(first["_x"], first["_y"]), crs=units.crs)


def resolve_data_root(cfg, base_dir: str | os.PathLike) -> Path:
    """The data folder of a study: ``$<root_env>`` when set, else ``root`` relative to ``base_dir``.

    Raises:
        UnitsError: when the folder does not exist, saying where the data comes from and how to point to it.
    """
    import os as _os

    env_value = _os.environ.get(cfg.root_env) if cfg.root_env else None
    root = Path(env_value) if env_value else Path(base_dir) / cfg.root
    if not cfg.root and not env_value:
        raise UnitsError("data.root", "the folder holding the study's data", "nothing configured",
                         "set data.root in params.yaml (relative to it) or the environment variable in data.root_env")
    if not root.is_dir():
        how = f"set data.root or the environment variable {cfg.root_env}" if cfg.root_env else "set data.root"
        where = f" ({cfg.source})" if cfg.source else ""
        raise UnitsError(str(root), "the study's data folder", missing_reason(root, "folder"),
                         f"obtain the data{where} and {how} to its location")
    return root


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UnitsError(str(path), "a units table", missing_reason(path), "check data.units / data.locations")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".geoparquet"):
            try:
                return gpd.read_parquet(path)
            except ValueError:
                return pd.read_parquet(path)
        if suffix in (".gpkg", ".shp", ".geojson"):
            return gpd.read_file(path)
        if suffix == ".dta":
            return pd.read_stata(path, convert_categoricals=True)
    except (OSError, ValueError) as exc:
        raise UnitsError(str(path), "a readable table", f"an unreadable file ({exc})", "re-export the file") from None
    raise UnitsError(str(path), "a .csv, .parquet, .gpkg or .dta file", f"a {suffix or 'suffix-less'} file",
                     "convert the table to one of those formats")


def _require_columns(df: pd.DataFrame, cols, source: str, key: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        import difflib

        hints = {m: difflib.get_close_matches(m, [str(c) for c in df.columns], n=1) for m in missing}
        hint = "; ".join(f"{m} -> {h[0]}?" for m, h in hints.items() if h)
        raise UnitsError(f"{source}: columns", f"columns {missing} (from {key})",
                         f"columns {[str(c) for c in df.columns][:20]}",
                         f"fix {key} in params.yaml" + (f" ({hint})" if hint else ""))


def load_study_units(cfg, base_dir: str | os.PathLike) -> tuple[gpd.GeoDataFrame, dict]:
    """Read a real study's units file, map its columns to the contract and validate it.

    Args:
        cfg: a :class:`pipeline.core.config.DataConfig`.
        base_dir: the folder of the params file (``data.root`` is relative to it).

    Returns:
        The validated units (covariates renamed ``x_<name>``) and a report of what was recoded, imputed or
        dropped (never silently).
    """
    root = resolve_data_root(cfg, base_dir)
    path = root / cfg.units
    source = str(path)
    raw = _read_table(path)
    c = cfg.columns
    if cfg.locations:
        locs = _read_table(root / cfg.locations)
        _require_columns(raw, [cfg.location_key], source, "data.location_key")
        _require_columns(locs, [cfg.location_key, c.lon, c.lat], str(root / cfg.locations), "data.columns")
        if locs[cfg.location_key].duplicated().any():
            raise UnitsError(f"{root / cfg.locations}: {cfg.location_key}", "one row per location",
                             "duplicated keys", "de-duplicate the locations file")
        raw = raw.merge(pd.DataFrame(locs)[[cfg.location_key, c.lon, c.lat]], on=cfg.location_key,
                        how="left", suffixes=("_units", ""))
    needed = [c.unit_id, c.location_id, c.cluster_id, c.W, c.lon, c.lat] + list(cfg.covariates)
    needed += list(cfg.outcome_difference) if cfg.outcome_difference else [c.Y]
    _require_columns(raw, list(dict.fromkeys(needed)), source, "data.columns / data.covariates")
    report: dict = {"source": source, "n_rows": int(len(raw))}

    w = raw[c.W]
    if cfg.treated_codes or cfg.control_codes:
        codes = {**{str(v): 1 for v in cfg.treated_codes}, **{str(v): 0 for v in cfg.control_codes}}
        as_str = w.astype(str)
        unknown = sorted(set(as_str[w.notna()]) - set(codes))
        if unknown:
            raise UnitsError(f"{source}: {c.W}", f"treatment codes {sorted(codes)}", f"also {unknown[:5]}",
                             "add them to data.treated_codes / data.control_codes or fix the file")
        w = as_str.map(codes).where(w.notna())
        report["treatment_codes"] = codes
    if cfg.outcome_difference:
        end, base = cfg.outcome_difference
        y = pd.to_numeric(raw[end], errors="coerce") - pd.to_numeric(raw[base], errors="coerce")
        report["outcome"] = f"{end} - {base}"
    else:
        y = raw[c.Y]
    units = pd.DataFrame({
        "unit_id": raw[c.unit_id].astype(str), "location_id": raw[c.location_id].astype(str),
        "cluster_id": raw[c.cluster_id].astype(str), "W": w, "Y": y,
        "lon": pd.to_numeric(raw[c.lon], errors="coerce"), "lat": pd.to_numeric(raw[c.lat], errors="coerce")})
    missing_y = units["Y"].isna()
    if missing_y.any():
        if cfg.missing_outcome == "drop":
            report["dropped_missing_outcome"] = int(missing_y.sum())
            units, raw = units[~missing_y], raw[~missing_y.to_numpy()]
        else:
            raise UnitsError(f"{source}: outcome", "an outcome for every unit",
                             f"{int(missing_y.sum())} of {len(units)} missing",
                             "set data.missing_outcome: drop to drop them (counted in the report)")
    imputed = {}
    for col in cfg.covariates:
        if col in cfg.post_treatment:
            raise UnitsError(f"{source}: {col}", "pre-treatment covariates only", f"{col}, declared post-treatment",
                             f"remove {col} from data.covariates")
        v = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
        name = col if col.startswith(COVARIATE_PREFIX) else f"{COVARIATE_PREFIX}{col}"
        miss = np.isnan(v)
        if miss.any():
            if cfg.missing_covariates != "impute":
                raise UnitsError(f"{source}: {col}", "no missing covariate values", f"{int(miss.sum())} missing",
                                 "set data.missing_covariates: impute (median + indicator) or fill them")
            v = np.where(miss, np.nanmedian(v), v)
            units[f"{name}_missing"] = miss.astype(np.int64)
            imputed[col] = int(miss.sum())
        units[name] = v
    if imputed:
        report["imputed_covariates"] = imputed
    if pd.api.types.is_numeric_dtype(units["W"]) and units["W"].notna().all():
        units["W"] = units["W"].astype(np.int64)
    units = units.reset_index(drop=True)
    report["n_units"] = int(len(units))
    report["n_locations"] = int(units["location_id"].nunique())
    report["n_clusters"] = int(units["cluster_id"].nunique())
    report["treated_share"] = float(pd.to_numeric(units["W"], errors="coerce").mean())
    validated = validate_units(units, source=source, post_treatment=[
        f"{COVARIATE_PREFIX}{p}" if not p.startswith(COVARIATE_PREFIX) else p for p in cfg.post_treatment])
    report["warnings"] = check_assignment(validated, source)
    return validated.drop(columns=["lon", "lat"]), report
