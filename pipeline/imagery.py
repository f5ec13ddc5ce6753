"""Landsat scenes: opening, metadata, footprints and reflectance scaling.

A :class:`Scene` is the metadata of one raster read once (CRS, transform, size, bands, dtype, nodata and the
per-band scale/offset stored in the file). :func:`to_reflectance` turns digital numbers into surface
reflectance with those scale/offsets (Landsat Collection 2 Level-2: DN * 2.75e-5 - 0.2) and nodata into NaN.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from shapely.geometry import box

from .errors import ImageryError


@dataclass(frozen=True)
class Scene:
    """Metadata of one raster, read once."""

    path: str
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    band_names: tuple[str, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]

    @property
    def res(self) -> float:
        return float(abs(self.transform[0]))

    @property
    def affine(self) -> rasterio.Affine:
        return rasterio.Affine(*self.transform[:6])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a = self.affine
        xs = [a.c, a.c + a.a * self.width]
        ys = [a.f, a.f + a.e * self.height]
        return min(xs), min(ys), max(xs), max(ys)


def open_scene(path: str | os.PathLike) -> Scene:
    """Read a raster's metadata.

    Raises:
        ImageryError: the file is missing, not a raster rasterio can open, has no CRS, or is rotated.
    """
    path = str(path)
    if not Path(path).exists():
        raise ImageryError(path, "an existing raster file", "no such file", "check the scene path or glob")
    try:
        with rasterio.open(path) as ds:
            crs = ds.crs
            if crs is None:
                raise ImageryError(path, "a raster with a coordinate reference system", "no CRS",
                                   "assign one, e.g. `gdal_edit.py -a_srs EPSG:32636 FILE`")
            a = ds.transform
            if a.b != 0 or a.d != 0:
                raise ImageryError(path, "a north-up raster", "a rotated geotransform", "warp it north-up first")
            names = tuple(d or f"band{i + 1}" for i, d in enumerate(ds.descriptions))
            # read one block to detect truncated / corrupt files early
            ds.read(1, window=((0, min(1, ds.height)), (0, min(1, ds.width))))
            return Scene(path=path, crs=crs.to_string(), transform=tuple(a)[:6], width=ds.width,
                         height=ds.height, count=ds.count, dtype=ds.dtypes[0], nodata=ds.nodata,
                         band_names=names, scales=tuple(float(s) for s in ds.scales),
                         offsets=tuple(float(o) for o in ds.offsets))
    except RasterioIOError as exc:
        raise ImageryError(path, "a raster readable by rasterio (GeoTIFF/COG/VRT)", f"an unreadable file ({exc})",
                           "re-download or re-export the file") from None


def resolve_scene_paths(patterns: Iterable[str | os.PathLike], base: str | os.PathLike = ".") -> list[str]:
    """Expand files and globs (relative to ``base``) into a sorted list of paths."""
    out: list[str] = []
    for pat in patterns:
        p = Path(base) / pat if not os.path.isabs(pat) else Path(pat)
        hits = sorted(glob.glob(str(p)))
        if not hits:
            raise ImageryError(str(pat), "at least one matching raster", "no file", "check the scene path/glob")
        out.extend(hits)
    return sorted(dict.fromkeys(out))


class SceneCatalog:
    """A set of scenes with a footprint index (EPSG:4326) for finding the scenes that cover a point."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = list(scenes)
        if not self.scenes:
            raise ImageryError("scenes", "at least one scene", "none", "give scene paths or a glob")
        counts = {s.count for s in self.scenes}
        if len(counts) > 1:
            detail = ", ".join(f"{Path(s.path).name}: {s.count}" for s in self.scenes)
            raise ImageryError("scenes", "the same band count in every scene", detail,
                               "select the same bands in every scene")

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike]) -> "SceneCatalog":
        return cls([open_scene(p) for p in paths])

    def footprints(self) -> gpd.GeoDataFrame:
        """One row per scene with its footprint polygon in EPSG:4326."""
        geoms = [box(*transform_bounds(s.crs, "EPSG:4326", *s.bounds)) for s in self.scenes]
        return gpd.GeoDataFrame({"scene": [s.path for s in self.scenes], "crs": [s.crs for s in self.scenes],
                                 "bands": [s.count for s in self.scenes]}, geometry=geoms, crs=4326)

    def project(self, scene: Scene, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reproject lon/lat points into the scene's CRS."""
        x, y = warp_transform("EPSG:4326", scene.crs, list(map(float, lon)), list(map(float, lat)))
        return np.asarray(x), np.asarray(y)


def to_reflectance(dn: np.ndarray, scene: Scene, apply_scale: bool = True) -> np.ndarray:
    """Convert a (bands, rows, cols) DN block to float32 reflectance, nodata -> NaN.

    The per-band scale/offset stored in the file are applied when ``apply_scale`` (they are 1/0 for
    products that are already in reflectance or are 8-bit).
    """
    out = dn.astype(np.float32)
    if scene.nodata is not None and not np.isnan(scene.nodata):
        out[dn == scene.nodata] = np.nan
    if apply_scale:
        scales = np.asarray(scene.scales, dtype=np.float32)[:, None, None]
        offsets = np.asarray(scene.offsets, dtype=np.float32)[:, None, None]
        out = out * scales + offsets
    return out
