"""Multi-scale chips around locations, with windows in metres.

For each location and each scale (a square window ``size_m`` metres wide, resampled to ``px`` x ``px``):

1. the location is reprojected into the scene's CRS;
2. the window [x - size_m/2, x + size_m/2] x [y - size_m/2, y + size_m/2] is converted to fractional pixel
   coordinates of the scene; the integer pixels covering it are read with one rasterio windowed read
   (clipped to the raster); pixels outside the raster are NaN (padding, never a shifted window);
3. the window is resampled to ``px`` x ``px`` by exact area weighting (``average``: each output pixel is
   the NaN-aware, overlap-weighted mean of the source pixels it covers; works for any size ratio and
   fractional window origins) or by ``nearest`` (the source pixel under each output pixel's centre);
4. the valid fraction (share of the window's area covered by valid source pixels) is recorded.

Chips are float32 reflectance, NaN where invalid, stored per scale as (locations, bands, px, px).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from .artifacts import read_npy, require, write_npy, write_with
from .config import ScaleConfig, TileConfig
from .errors import ImageryError, TilingError
from .imagery import Scene, SceneCatalog, to_reflectance
from .sites import locations_table, read_units


@dataclass
class ChipSet:
    """Chips of all scales for a list of locations, plus the manifest."""

    location_ids: list[str]
    chips: dict[str, np.ndarray]  # scale name -> (n_locations, bands, px, px) float32
    manifest: pd.DataFrame


def area_weights(start: float, length: float, n_out: int) -> tuple[int, np.ndarray]:
    """Overlap weights of ``n_out`` equal output bins over source pixels.

    The output covers source coordinates [start, start + length) (in source pixels, fractional). Returns
    ``(first, W)`` where source pixel ``first + j`` contributes ``W[i, j]`` (its overlap, in source pixels)
    to output bin ``i``. Rows of ``W`` sum to ``length / n_out``.
    """
    first = math.floor(start)
    last = math.ceil(start + length)
    edges = start + np.arange(n_out + 1) * (length / n_out)
    lo = np.maximum(edges[:-1, None], np.arange(first, last)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(first, last)[None, :] + 1)
    return first, np.clip(hi - lo, 0.0, None)


def _resample(block: np.ndarray, valid: np.ndarray, wr: np.ndarray, wc: np.ndarray, method: str) -> np.ndarray:
    if method == "average":
        filled = np.where(valid, block, 0.0)
        num = np.einsum("ij,bjk,lk->bil", wr, filled, wc, optimize=True)
        den = wr @ valid[0].astype(np.float64) @ wc.T
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / den[None]
        out[:, den <= 1e-12] = np.nan
        return out.astype(np.float32)
    if method == "nearest":
        ri = np.argmax(wr, axis=1)
        ci = np.argmax(wc, axis=1)
        out = block[:, ri][:, :, ci].astype(np.float32)
        out[~np.broadcast_to(valid[:, ri][:, :, ci], out.shape)] = np.nan
        return out
    raise TilingError("resampling", "'average' or 'nearest'", repr(method), "set tile.resampling")


def read_chip(ds: rasterio.io.DatasetReader, scene: Scene, x: float, y: float, scale: ScaleConfig,
              resampling: str = "average", apply_scale: bool = True) -> tuple[np.ndarray, float, tuple]:
    """Read one chip centred on (x, y) in the scene's CRS.

    Returns:
        chip (bands, px, px) float32 with NaN where invalid, the valid fraction of the window, and the
        window bounds (minx, miny, maxx, maxy) in the scene's CRS.
    """
    res = scene.res
    if scale.size_m < res:
        raise TilingError(f"scale {scale.name}: size_m", f"a window of at least one pixel ({res:g} m)",
                          f"{scale.size_m:g} m", "enlarge the window or use finer imagery")
    a = scene.affine
    half = scale.size_m / 2.0
    minx, maxx, miny, maxy = x - half, x + half, y - half, y + half
    col_start = (minx - a.c) / a.a
    row_start = (maxy - a.f) / a.e  # a.e < 0 for north-up rasters
    length = scale.size_m / res
    c0, wc = area_weights(col_start, length, scale.px)
    r0, wr = area_weights(row_start, length, scale.px)
    nr, nc = wr.shape[1], wc.shape[1]
    block = np.full((scene.count, nr, nc), np.nan, dtype=np.float32)
    rr0, rr1 = max(r0, 0), min(r0 + nr, scene.height)
    cc0, cc1 = max(c0, 0), min(c0 + nc, scene.width)
    if rr1 > rr0 and cc1 > cc0:
        dn = ds.read(window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        block[:, rr0 - r0: rr1 - r0, cc0 - c0: cc1 - c0] = to_reflectance(dn, scene, apply_scale)
    valid = np.isfinite(block).all(axis=0, keepdims=True)
    total = wr.sum() * wc.sum()
    valid_frac = float((wr @ valid[0].astype(np.float64) @ wc.T).sum() / total) if total > 0 else 0.0
    chip = _resample(block, valid, wr, wc, resampling)
    return chip, valid_frac, (minx, miny, maxx, maxy)


def tile_locations(catalog: SceneCatalog, location_ids: Sequence[str], lon: np.ndarray, lat: np.ndarray,
                   scales: Sequence[ScaleConfig], resampling: str = "average",
                   apply_scale: bool = True, progress: bool = False) -> ChipSet:
    """Cut chips at every scale for every location, choosing per chip the scene with most valid pixels.

    Raises:
        ImageryError: when some locations fall outside every scene (names them; hints at swapped lon/lat).
    """
    if not scales:
        raise TilingError("tile.scales", "at least one scale", "none", "list scales under tile.scales")
    n = len(location_ids)
    count = catalog.scenes[0].count
    chips = {s.name: np.full((n, count, s.px, s.px), np.nan, dtype=np.float32) for s in scales}
    best = {s.name: np.full(n, -1.0) for s in scales}
    meta: dict[tuple[str, int], tuple] = {}
    covered = np.zeros(n, dtype=bool)
    iterator = catalog.scenes
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="tiling scenes")
    for scene in iterator:
        xs, ys = catalog.project(scene, lon, lat)
        minx, miny, maxx, maxy = scene.bounds
        inside = np.flatnonzero((xs >= minx) & (xs < maxx) & (ys > miny) & (ys <= maxy))
        covered[inside] = True
        with rasterio.open(scene.path) as ds:
            for i in inside:
                for s in scales:
                    chip, vf, bounds = read_chip(ds, scene, xs[i], ys[i], s, resampling, apply_scale)
                    if vf > best[s.name][i]:
                        best[s.name][i] = vf
                        chips[s.name][i] = chip
                        meta[(s.name, i)] = (scene.path, vf, bounds, scene.crs)
    if not covered.all():
        missing = [location_ids[i] for i in np.flatnonzero(~covered)]
        hint = ""
        sw_hit = 0
        for scene in catalog.scenes:
            xs, ys = catalog.project(scene, lat[~covered], lon[~covered])
            minx, miny, maxx, maxy = scene.bounds
            sw_hit += int(((xs >= minx) & (xs < maxx) & (ys > miny) & (ys <= maxy)).sum())
        if sw_hit:
            hint = f" ({sw_hit} of them fall inside a scene if lon and lat are swapped: check the column order)"
        raise ImageryError("locations", "every location inside at least one scene",
                           f"{len(missing)} of {n} outside all scenes, e.g. {missing[:5]}{hint}",
                           "add scenes covering them or drop those units explicitly")
    rows = []
    for s in scales:
        for i, loc in enumerate(location_ids):
            path, vf, (bx0, by0, bx1, by1), crs = meta[(s.name, i)]
            rows.append({"location_id": loc, "index": i, "scale": s.name, "size_m": s.size_m, "px": s.px,
                         "scene": path, "crs": crs, "valid_fraction": vf,
                         "minx": bx0, "miny": by0, "maxx": bx1, "maxy": by1})
    return ChipSet(location_ids=list(location_ids), chips=chips, manifest=pd.DataFrame(rows))


def write_chipset(chipset: ChipSet, out_dir: str | os.PathLike) -> None:
    """Write one ``<scale>.npy`` per scale, ``manifest.parquet`` and ``locations.parquet`` (atomically each;
    the manifest is written last, so its presence marks a complete store)."""
    out = Path(out_dir)
    for name, arr in chipset.chips.items():
        write_npy(out / f"{name}.npy", arr)
    write_with(out / "locations.parquet",
               lambda tmp: pd.DataFrame({"location_id": chipset.location_ids}).to_parquet(tmp, index=False))
    write_with(out / "manifest.parquet", lambda tmp: chipset.manifest.to_parquet(tmp, index=False))


def read_chip_store(tile_dir: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray], pd.DataFrame]:
    """Read location ids, chips per scale and the manifest written by :func:`write_chipset`."""
    tile_dir = Path(tile_dir)
    manifest_path = require(tile_dir / "manifest.parquet", "a complete chip store (manifest.parquet)")
    manifest = pd.read_parquet(manifest_path)
    locations = pd.read_parquet(tile_dir / "locations.parquet")["location_id"].tolist()
    chips = {s: read_npy(tile_dir / f"{s}.npy") for s in dict.fromkeys(manifest["scale"])}
    return locations, chips, manifest


def tile_study(units_path: str | os.PathLike, scene_paths: Sequence[str], cfg: TileConfig,
               out_dir: str | os.PathLike, progress: bool = True) -> ChipSet:
    """Tile every location of a units file at every scale of ``cfg`` and write the chip store."""
    units = read_units(units_path)
    locs = locations_table(units)
    catalog = SceneCatalog.from_paths(scene_paths)
    chipset = tile_locations(catalog, locs["location_id"].astype(str).tolist(), locs.geometry.x.to_numpy(),
                             locs.geometry.y.to_numpy(), cfg.scales, cfg.resampling, progress=progress)
    write_chipset(chipset, out_dir)
    return chipset
