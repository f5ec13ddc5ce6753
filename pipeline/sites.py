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

from .artifacts import write_with
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
                             f"fill or remove those rows explicitly (the pipeline never drops units silently)")
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
