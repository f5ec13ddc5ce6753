"""Multi-scale chips around locations, with windows in metres; chip store and manifest.

For each location and each scale (a square window ``size_m`` metres wide, resampled to ``px`` x ``px``):

1. the location (lon/lat) is reprojected into each candidate scene's CRS (candidates come from the
   footprint index; optional seeded DHS-style jitter displaces it first);
2. the window [x - size_m/2, x + size_m/2] x [y - size_m/2, y + size_m/2] becomes fractional pixel
   coordinates of the scene; pixels outside the raster, nodata, and QA fill/cloud/shadow pixels are NaN
   (a window crossing the edge is padded, never shifted);
3. the window is resampled to ``px`` x ``px``: ``average`` is exact area weighting (each output pixel is the
   overlap-weighted mean of the valid source pixels it covers, for any size ratio and fractional origin),
   ``nearest`` takes the source pixel under each output pixel's centre;
4. the valid fraction (share of the window's area covered by valid pixels) and cloud fraction are
   recorded; among scenes covering a location the chip with the highest valid fraction is kept.

Speed: locations are grouped by scene and by ``block_px`` x ``block_px`` tiles of their centres; each group
reads the region covering all its windows **once** and slices every chip of every scale out of it, so memory
is bounded by one block per worker whatever the scene size. Resampling is batched: all chips of one scale in
a group are two batched matrix products (rows, then columns) with per-chip weight matrices.

Chips are float32 values (reflectance for L2 products), stored per scale in a Zarr group
``chips.zarr/<scale>`` of shape (locations, bands, px, px), plus ``manifest.parquet`` (written last: its
presence marks a complete store) and ``locations.parquet``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import rasterio

from ..core.artifacts import chip_codec, require, write_with
from ..core.config import ON_OUTSIDE, RESAMPLING_METHODS, ScaleConfig, TileConfig
from ..core.errors import ArtifactError, ImageryError, TilingError
from ..core.layout import ChipStorePaths
from ._area_kernel import area_resample, summed_area
from .scenes import Radiometry, Scene, SceneCatalog, SceneReader


@dataclass
class ChipSet:
    """Chips of all scales for a list of locations, plus the manifest."""

    location_ids: list[str]
    chips: dict[str, np.ndarray]  # scale name -> (n_locations, bands, px, px) float32
    manifest: pd.DataFrame
    dropped: list[str] = field(default_factory=list)  # locations outside every scene (on_outside: drop)


def area_weights(start: float, length: float, n_out: int) -> tuple[int, np.ndarray]:
    """Overlap weights of ``n_out`` equal output bins over source pixels (one window; a reference for tests
    and for readers of the resampling maths).

    The output covers source coordinates [start, start + length) (in source pixels, fractional). Returns
    ``(first, W)`` where source pixel ``first + j`` contributes ``W[i, j]`` (its overlap, in source pixels)
    to output bin ``i``. Rows of ``W`` sum to ``length / n_out``.
    """
    first = math.floor(start)
    last = math.ceil(start + length)
    edges = start + np.arange(n_out + 1) * (length / n_out)
    cells = np.arange(first, last)
    lo = np.maximum(edges[:-1, None], cells[None, :])
    hi = np.minimum(edges[1:, None], cells[None, :] + 1)
    return first, np.clip(hi - lo, 0.0, None)


def check_scale(scale: ScaleConfig, res: float, where: str) -> None:
    """Raise a TilingError when a window is smaller than two source pixels (likely pixels given as metres)."""
    if scale.size_m < 2 * res:
        raise TilingError(f"scale {scale.name}: size_m ({where})",
                          f"a window in metres of at least two pixels ({2 * res:g} m at {res:g} m/pixel)",
                          f"{scale.size_m:g} m",
                          "give size_m in metres (e.g. 960), not in pixels; px is the output size in pixels")


def jitter_offsets(n: int, jitter_m: Sequence[float] | None, seed: int) -> np.ndarray:
    """(n, 2) displacements in metres: uniform direction, distance uniform in [min, max] (DHS style)."""
    if not jitter_m:
        return np.zeros((n, 2))
    lo, hi = float(jitter_m[0]), float(jitter_m[1])
    if not 0 <= lo <= hi:
        raise TilingError("tile.jitter_m", "[min, max] metres with 0 <= min <= max", repr(list(jitter_m)),
                          "e.g. [0, 2000] for DHS urban displacement")
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, n)
    dist = rng.uniform(lo, hi, n)
    return np.column_stack([dist * np.cos(angle), dist * np.sin(angle)])


MAX_BLOCK_BYTES = 2 * 2 ** 30  # one block read (values, masks and their summed-area tables)


def window_extent(scene: Scene, xs: np.ndarray, ys: np.ndarray, size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Half-widths along x and y, in the scene's CRS units, of square windows ``size_m`` metres wide centred
    at (xs, ys): the window is metres whatever the CRS (degrees are converted at each location's latitude)."""
    mx, my = scene.metres_per_unit(ys)
    return size_m / 2.0 / mx, size_m / 2.0 / my


def metres_to_units(scene: Scene, ys: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(n, 2) displacements in metres as displacements in the scene's CRS units at CRS y-coordinates ``ys``."""
    mx, my = scene.metres_per_unit(ys)
    return np.column_stack([d[:, 0] / mx, d[:, 1] / my])


def _window_sums(T: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Integral over fractional rectangles of a summed-area table (bilinear in every pixel)."""
    def at(r, c):
        ir = np.minimum(np.floor(r).astype(np.int64), T.shape[0] - 2)
        ic = np.minimum(np.floor(c).astype(np.int64), T.shape[1] - 2)
        fr, fc = r - ir, c - ic
        return ((1 - fr) * (1 - fc) * T[ir, ic] + (1 - fr) * fc * T[ir, ic + 1] + fr * (1 - fc) * T[ir + 1, ic]
                + fr * fc * T[ir + 1, ic + 1])
    return at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)


def _tile_group(reader: SceneReader, xs: np.ndarray, ys: np.ndarray, scales: Sequence[ScaleConfig],
                method: str, shifts: dict | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """Chips of every scale for one group of locations, from one read of their covering block.

    ``shifts`` optionally displaces the windows of some scales: ``{scale name: (n, 2) metres}`` (the
    jittered copies of a scale).

    Exact area averaging uses summed-area tables of the block (:mod:`pipeline.imagery._area_kernel`); an output
    pixel is the mean over the valid part of its area, and NaN when less than half of its area is valid (a
    sliver of data at a raster edge does not stand for the whole pixel). Windows are ``size_m`` metres on
    the ground in any CRS: in a geographic CRS their extent in degrees follows each location's latitude, so
    rows and columns may cover different numbers of source pixels.

    Raises:
        TilingError: when the block to read would exceed :data:`MAX_BLOCK_BYTES` (a window far larger than the
            scene's pixels, e.g. metres read as degrees, or a huge ``block_px``).
    """
    scene = reader.scene
    a = scene.affine
    plan = {}
    base_xs, base_ys = xs, ys
    for s in scales:
        xs, ys = base_xs, base_ys
        if shifts and s.name in shifts:
            d = metres_to_units(scene, ys, shifts[s.name])
            xs, ys = xs + d[:, 0], ys + d[:, 1]
        hx, hy = window_extent(scene, xs, ys, s.size_m)
        len_c, len_r = 2 * hx / abs(a.a), 2 * hy / abs(a.e)
        col_start = (xs - hx - a.c) / a.a
        row_start = (ys + hy - a.f) / a.e
        plan[s.name] = (row_start, col_start, len_r, len_c, (xs - hx, ys - hy, xs + hx, ys + hy))
    oy = math.floor(min(p[0].min() for p in plan.values()))
    ox = math.floor(min(p[1].min() for p in plan.values()))
    h = math.ceil(max((p[0] + p[2]).max() for p in plan.values())) - oy
    w = math.ceil(max((p[1] + p[3]).max() for p in plan.values())) - ox
    need = h * w * (scene.count * 12 + 32)
    if need > MAX_BLOCK_BYTES:
        big = max(scales, key=lambda sc: sc.size_m)
        raise TilingError(f"scale {big.name}: size_m ({scene.name})",
                          f"windows that fit in memory (at most {MAX_BLOCK_BYTES / 2 ** 30:.0f} GiB per read)",
                          f"{big.size_m:g} m = {h} x {w} pixels of {scene.res_m:.3g} m, {need / 2 ** 30:.1f} GiB",
                          "give size_m in metres for the scene's pixels, or lower tile.block_px")
    # the block covering every window of the group, read once; outside the raster stays NaN
    vals = np.full((scene.count, h, w), np.nan, dtype=np.float32)
    cloud = np.zeros((h, w), dtype=bool)
    zero = np.zeros((h, w), dtype=bool)
    br0, br1 = max(oy, 0), min(oy + h, scene.height)
    bc0, bc1 = max(ox, 0), min(ox + w, scene.width)
    if br1 > br0 and bc1 > bc0:
        v, c, z = reader.read_masks(int(br0), int(bc0), int(br1 - br0), int(bc1 - bc0))
        vals[:, br0 - oy: br1 - oy, bc0 - ox: bc1 - ox] = v
        cloud[br0 - oy: br1 - oy, bc0 - ox: bc1 - ox] = c
        zero[br0 - oy: br1 - oy, bc0 - ox: bc1 - ox] = z
    valid = np.isfinite(vals).all(axis=0)
    all_valid = bool(valid.all())
    S = summed_area(vals if all_valid else np.where(valid, vals, np.float32(0)))
    if all_valid:  # the table of an all-ones mask is i * j
        Sv = np.outer(np.arange(h + 1, dtype=np.float64), np.arange(w + 1, dtype=np.float64))
    else:
        Sv = summed_area(valid)
    Sc = summed_area(cloud) if cloud.any() else np.zeros((h + 1, w + 1))
    Sz = summed_area(zero) if zero.any() else None
    out = {}
    for s in scales:
        row_start, col_start, len_r, len_c, bounds = plan[s.name]
        steps = np.arange(s.px + 1) / s.px
        er = np.clip(row_start[:, None] - oy + steps[None, :] * len_r[:, None], 0, h)
        ec = np.clip(col_start[:, None] - ox + steps[None, :] * len_c[:, None], 0, w)
        bin_area = len_r * len_c / s.px ** 2
        chips, den, cloudy = area_resample(S, Sv, Sc, er, ec, 0.5 * bin_area)
        if method == "nearest":
            ri = np.minimum(np.floor((er[:, :-1] + er[:, 1:]) / 2).astype(np.int64), h - 1)
            ci = np.minimum(np.floor((ec[:, :-1] + ec[:, 1:]) / 2).astype(np.int64), w - 1)
            chips = np.moveaxis(vals[:, ri[:, :, None], ci[:, None, :]], 0, 1).copy()
            chips[np.broadcast_to(~valid[ri[:, :, None], ci[:, None, :]][:, None], chips.shape)] = np.nan
        area = len_r * len_c
        zeros = (np.zeros(len(area)) if Sz is None
                 else _window_sums(Sz, er[:, 0], er[:, -1], ec[:, 0], ec[:, -1]) / area)
        out[s.name] = (chips, den.sum(axis=(1, 2)) / area, cloudy / area, zeros, np.column_stack(bounds))
    return out


def plan_jobs(catalog: SceneCatalog, lon: np.ndarray, lat: np.ndarray, offsets: np.ndarray, block_px: int,
              margin_m: float = 0.0):
    """Group locations by scene and by ``block_px`` tiles of their centres.

    A location belongs to a scene when its window (half-width ``margin_m`` metres: the smallest scale's)
    overlaps the raster, so points on an edge or corner, or just outside, get partial windows with their
    true valid fraction. Returns ([(scene, location indices, xs, ys) per group], covered mask). Each group is
    read with one windowed read covering all its windows.
    """
    covered = np.zeros(len(lon), dtype=bool)
    jobs = []
    for scene, cand in zip(catalog.scenes, catalog.candidates(lon, lat, margin_m)):
        xs, ys = catalog.project(scene, lon[cand], lat[cand])
        if len(cand):
            d = metres_to_units(scene, ys, offsets[cand])
            xs, ys = xs + d[:, 0], ys + d[:, 1]
        hx, hy = window_extent(scene, xs, ys, 2 * margin_m)
        minx, miny, maxx, maxy = scene.bounds
        if margin_m > 0:
            inside = (xs + hx > minx) & (xs - hx < maxx) & (ys + hy > miny) & (ys - hy < maxy)
        else:
            inside = (xs >= minx) & (xs < maxx) & (ys > miny) & (ys <= maxy)
        idx, xs, ys = cand[inside], xs[inside], ys[inside]
        covered[idx] = True
        if not len(idx):
            continue
        a = scene.affine
        key_r = np.floor((ys - a.f) / a.e / block_px).astype(np.int64)
        key_c = np.floor((xs - a.c) / a.a / block_px).astype(np.int64)
        order = np.lexsort((key_c, key_r))
        keys = np.column_stack([key_r, key_c])[order]
        cuts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for grp in np.split(order, cuts):
            jobs.append((scene, idx[grp], xs[grp], ys[grp]))
    return jobs, covered


def block_region(scene: Scene, xs: np.ndarray, ys: np.ndarray, scales: Sequence[ScaleConfig]):
    """(row0, col0, nrows, ncols) of the in-raster region covering every window of a group."""
    a = scene.affine
    hx, hy = window_extent(scene, xs, ys, max(s.size_m for s in scales))
    c0 = math.floor(((xs - hx - a.c) / a.a).min())
    c1 = math.ceil(((xs + hx - a.c) / a.a).max()) + 1
    r0 = math.floor(((ys + hy - a.f) / a.e).min())
    r1 = math.ceil(((ys - hy - a.f) / a.e).max()) + 1
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, scene.height), min(c1, scene.width)
    return r0, c0, max(r1 - r0, 0), max(c1 - c0, 0)


def _tile_job(scene: Scene, xs: np.ndarray, ys: np.ndarray, scales, method: str, radiometry, shifts=None):
    """One block group, self-contained (opens its own reader): the unit of work of a Dask task."""
    with rasterio.Env(GDAL_CACHEMAX=64 * 2 ** 20), SceneReader(scene, radiometry) as reader:
        return _tile_group(reader, xs, ys, scales, method, shifts)


def tile_locations(catalog: SceneCatalog, location_ids: Sequence[str], lon: np.ndarray, lat: np.ndarray,
                   scales: Sequence[ScaleConfig], resampling: str = TileConfig.resampling,
                   radiometry: Radiometry = TileConfig.radiometry, jitter_m: Sequence[float] | None = None,
                   jitter_seed: int = TileConfig.jitter_seed, block_px: int = TileConfig.block_px,
                   workers: int = TileConfig.workers, on_outside: str = TileConfig.on_outside, progress: bool = False,
                   client=None, offsets: np.ndarray | None = None,
                   scale_offsets: dict | None = None) -> ChipSet:
    """Cut chips at every scale for every location, keeping per chip the scene with most valid pixels.

    Args:
        catalog: the scenes. location_ids, lon, lat: the locations (EPSG:4326).
        scales: window sizes in metres and output sizes in pixels.
        resampling: ``average`` (exact area weighting) or ``nearest``.
        radiometry: see :func:`pipeline.imagery.scenes.radiometry_for`.
        jitter_m: optional [min, max] displacement in metres (seeded by ``jitter_seed``).
        block_px: side of the location groups that share one read.
        workers: threads reading and resampling groups in parallel.
        on_outside: ``error`` (default) or ``drop`` for locations outside every scene; dropped ones are
            listed in the manifest with ``scene`` empty and valid fraction 0.
        client: an optional ``distributed.Client``: block groups become Dask tasks (retried if a worker
            dies), gathered in job order, so the chips are identical to the synchronous ones.
        offsets: per-location displacements in metres (default: from ``jitter_m``/``jitter_seed``).
        scale_offsets: extra per-scale displacements ``{scale name: (n, 2) metres}`` (jittered copies).

    Raises:
        ImageryError: locations outside every scene (names them; hints at swapped lon/lat).
        TilingError: invalid scales or resampling.
    """
    if not scales:
        raise TilingError("tile.scales", "at least one scale", "none", "list scales under tile.scales")
    if resampling not in RESAMPLING_METHODS:
        raise TilingError("tile.resampling", f"one of {RESAMPLING_METHODS}", repr(resampling),
                          "set tile.resampling")
    if on_outside not in ON_OUTSIDE:
        raise TilingError("tile.on_outside", "'error' or 'drop'", repr(on_outside), "pick one")
    for scene in catalog.scenes:
        for s in scales:
            check_scale(s, scene.res_m, scene.name)
    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    n = len(location_ids)
    count = catalog.scenes[0].count
    if offsets is None:
        offsets = jitter_offsets(n, jitter_m, jitter_seed)
    chips = {s.name: np.full((n, count, s.px, s.px), np.nan, dtype=np.float32) for s in scales}
    best = {s.name: np.full(n, -1.0) for s in scales}
    meta = {s.name: {"scene": np.full(n, "", dtype=object), "crs": np.full(n, "", dtype=object),
                     "cloud": np.zeros(n), "zero": np.zeros(n), "bounds": np.full((n, 4), np.nan)} for s in scales}
    jobs, covered = plan_jobs(catalog, lon, lat, offsets, block_px, coverage_margin(scales))

    import threading

    local = threading.local()
    readers: list[SceneReader] = []

    def reader_for(scene: Scene) -> SceneReader:
        cache = getattr(local, "readers", None)
        if cache is None:
            cache = local.readers = {}
        if scene.name not in cache:
            cache[scene.name] = SceneReader(scene, radiometry)
            readers.append(cache[scene.name])
        return cache[scene.name]

    def shifts_for(idx):
        return {k: v[idx] for k, v in scale_offsets.items()} if scale_offsets else None

    def run(job):
        scene, idx, xs, ys = job
        return scene, idx, _tile_group(reader_for(scene), xs, ys, scales, resampling, shifts_for(idx))

    # every block is read exactly once: a large GDAL block cache only costs memory
    with rasterio.Env(GDAL_CACHEMAX=64 * 2 ** 20):
        try:
            if client is not None:
                from ..core.compute import run_ordered

                results = run_ordered(client, _tile_job, [(sc, xs, ys, list(scales), resampling, radiometry,
                                                           shifts_for(idx)) for sc, idx, xs, ys in jobs])
                for (scene, idx, _, _), res in zip(jobs, results):
                    _keep((scene, idx, res), chips, best, meta)
            elif workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    results = pool.map(run, jobs)
                    results = _progress(results, len(jobs), progress)
                    for item in results:
                        _keep(item, chips, best, meta)
            else:
                for item in _progress(map(run, jobs), len(jobs), progress):
                    _keep(item, chips, best, meta)
        finally:
            for r in readers:
                r.close()

    dropped = []
    if not covered.all():
        if on_outside == "error":
            raise outside_error(catalog, location_ids, lon, lat, covered)
        dropped = [location_ids[i] for i in np.flatnonzero(~covered)]
    rows = []
    for s in scales:
        m = meta[s.name]
        for i, loc in enumerate(location_ids):
            rows.append({"location_id": loc, "index": i, "scale": s.name, "size_m": s.size_m, "px": s.px,
                         "scene": m["scene"][i], "crs": m["crs"][i], "valid_fraction": max(best[s.name][i], 0.0),
                         "cloud_fraction": m["cloud"][i], "zero_fraction": m["zero"][i],
                         "minx": m["bounds"][i, 0], "miny": m["bounds"][i, 1],
                         "maxx": m["bounds"][i, 2], "maxy": m["bounds"][i, 3],
                         "jitter_dx": offsets[i, 0], "jitter_dy": offsets[i, 1], "dropped": bool(~covered[i])})
    return ChipSet(location_ids=list(location_ids), chips=chips, manifest=pd.DataFrame(rows), dropped=dropped)


def coverage_margin(scales: Sequence[ScaleConfig]) -> float:
    """Half the smallest window, in metres: a location whose smallest window overlaps a scene is in it."""
    return min(s.size_m for s in scales) / 2.0


def outside_error(catalog: SceneCatalog, location_ids: Sequence[str], lon: np.ndarray, lat: np.ndarray,
                  covered: np.ndarray, every: bool = False) -> ImageryError:
    """The error for locations outside every scene: names them, and hints when swapping lon and lat would
    put them inside a scene. ``every``: no location is inside any scene (dropping cannot help)."""
    missing = [location_ids[i] for i in np.flatnonzero(~covered)]
    sw = _swapped_hits(catalog, lon[~covered], lat[~covered])
    hint = f" ({sw} of them fall inside a scene if lon and lat are swapped: check the column order)" if sw else ""
    fix = ("give scenes that cover the trial (check data.scenes and the coordinates' columns and CRS)" if every else
           "add scenes covering them, or set tile.on_outside: drop to drop them (counted)")
    return ImageryError("locations", "locations inside the scenes" if every else "every location inside a scene",
                        f"{len(missing)} of {len(lon)} locations outside all scenes, e.g. {missing[:5]}{hint}", fix)


def _progress(it, total, show):
    if not show:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc="tiling", unit="block")


def _keep(item, chips, best, meta) -> None:
    scene, idx, res = item
    for name, (c, vf, cf, zf, bounds) in res.items():
        better = vf > best[name][idx]
        sel = idx[better]
        chips[name][sel] = c[better]
        best[name][sel] = vf[better]
        meta[name]["scene"][sel] = scene.name
        meta[name]["crs"][sel] = scene.crs
        meta[name]["cloud"][sel] = cf[better]
        meta[name]["zero"][sel] = zf[better]
        meta[name]["bounds"][sel] = bounds[better]


def _swapped_hits(catalog: SceneCatalog, lon: np.ndarray, lat: np.ndarray) -> int:
    ok = (np.abs(lat) <= 180) & (np.abs(lon) <= 90)
    if not ok.any():
        return 0
    hits = np.zeros(ok.sum(), dtype=bool)
    for scene in catalog.scenes:
        xs, ys = catalog.project(scene, lat[ok], lon[ok])
        minx, miny, maxx, maxy = scene.bounds
        hits |= (xs >= minx) & (xs < maxx) & (ys > miny) & (ys <= maxy)
    return int(hits.sum())


def write_chipset(chipset: ChipSet, out_dir: str | os.PathLike) -> None:
    """Write ``chips.zarr`` (one array per scale), ``locations.parquet`` and ``manifest.parquet``.

    The old manifest is removed first and the new one written last, after the Zarr store has been
    written under a temporary name and renamed: a store without a manifest is incomplete.
    """
    import zarr

    store = ChipStorePaths(Path(out_dir))
    store.root.mkdir(parents=True, exist_ok=True)
    manifest_path = store.manifest
    if manifest_path.exists():
        manifest_path.unlink()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{store.chips.name}-", dir=store.root))
    try:
        group = zarr.open_group(str(tmp), mode="w")
        for name, arr in chipset.chips.items():
            chunk = (max(1, min(64, arr.shape[0])),) + arr.shape[1:]
            z = group.create_array(name, shape=arr.shape, chunks=chunk, dtype="float32", fill_value=np.nan,
                                   compressors=chip_codec())
            z[:] = arr
        if store.chips.exists():
            shutil.rmtree(store.chips)
        os.replace(tmp, store.chips)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_with(store.locations,
               lambda t: pd.DataFrame({"location_id": chipset.location_ids}).to_parquet(t, index=False))
    write_with(manifest_path, lambda t: chipset.manifest.to_parquet(t, index=False))


def read_chip_store(tile_dir: str | os.PathLike, in_memory: bool = False):
    """(location ids, {scale: chips}, manifest) of a chip store; chips are lazy Zarr arrays unless
    ``in_memory``. Reading never needs the source rasters."""
    import zarr

    store = ChipStorePaths(Path(tile_dir))
    manifest = pd.read_parquet(require(store.manifest, "a complete chip store (its manifest)"))
    locations = pd.read_parquet(store.locations)["location_id"].tolist()
    try:
        group = zarr.open_group(str(store.chips), mode="r")
    except Exception:
        raise ArtifactError(str(store.chips), "a Zarr chip store", "a missing or unreadable store",
                            "re-run the tile stage") from None
    chips = {}
    for s in dict.fromkeys(manifest["scale"]):
        chips[s] = group[s][:] if in_memory else group[s]
    return locations, chips, manifest


def jitter_copies(cfg: TileConfig, n: int) -> tuple[list[ScaleConfig], dict[str, np.ndarray]]:
    """The scales to tile, with ``cfg.jitter_copies.copies`` jittered copies of each scale named in
    ``cfg.jitter_copies.scales`` (named ``<scale>@j<i>``), and each copy's per-location displacement
    (uniform direction, distance uniform in ``jitter_m``, seeded by ``seed + i``)."""
    jc = cfg.jitter_copies
    scales = list(cfg.scales)
    offsets = {}
    by_name = {s.name: s for s in cfg.scales}
    for name in jc.scales:
        if name not in by_name:
            raise TilingError("tile.jitter_copies.scales", f"scales among {list(by_name)}", repr(name),
                              "name a scale listed under tile.scales")
        for i in range(jc.copies):
            copy = f"{name}@j{i}"
            scales.append(ScaleConfig(copy, by_name[name].size_m, by_name[name].px))
            offsets[copy] = jitter_offsets(n, list(jc.jitter_m), jc.seed + i)
    return scales, offsets


def _spatial_order(catalog: SceneCatalog, lon: np.ndarray, lat: np.ndarray, block_px: int,
                   margin_m: float = 0.0) -> np.ndarray:
    """Location order for the chip store: by first covering scene, then by block, so that a chunk of
    consecutive locations shares few blocks (each chunk reads its blocks once). Uncovered ones go last."""
    n = len(lon)
    key = np.full((n, 3), np.iinfo(np.int64).max, dtype=np.int64)
    for si, (scene, cand) in enumerate(zip(catalog.scenes, catalog.candidates(lon, lat, margin_m))):
        free = cand[key[cand, 0] == np.iinfo(np.int64).max]
        if not len(free):
            continue
        xs, ys = catalog.project(scene, lon[free], lat[free])
        a = scene.affine
        key[free, 0] = si
        key[free, 1] = np.floor((ys - a.f) / a.e / block_px).astype(np.int64)
        key[free, 2] = np.floor((xs - a.c) / a.a / block_px).astype(np.int64)
    return np.lexsort((np.arange(n), key[:, 2], key[:, 1], key[:, 0]))


def _tile_chunk(partial: str, start: int, ids, lon, lat, offsets, scenes, scales, kw: dict,
                scale_offsets: dict | None = None) -> list[str]:
    """Tile one chunk of consecutive store rows, write its chips into the partial store's region and its
    manifest rows (written last: the chunk's completion marker). Returns the chunk's dropped locations."""
    import zarr

    cs = tile_locations(SceneCatalog(scenes), ids, lon, lat, scales, offsets=offsets, scale_offsets=scale_offsets,
                        **kw)
    group = zarr.open_group(partial, mode="r+")
    for name, arr in cs.chips.items():
        group[name][start: start + len(ids)] = arr
    man = cs.manifest.assign(index=cs.manifest["index"] + start)
    write_with(ChipStorePaths.chunk_marker(partial, start), lambda t: man.to_parquet(t, index=False))
    return cs.dropped


def tile_to_store(catalog: SceneCatalog, location_ids: Sequence[str], lon: np.ndarray, lat: np.ndarray,
                  cfg: TileConfig, out_dir: str | os.PathLike, client=None, chunk_locations: int = 4096,
                  progress: bool = False) -> pd.DataFrame:
    """Tile locations chunk by chunk straight into the Zarr chip store, resuming an interrupted run.

    Locations are put in spatial order and cut into chunks of ``chunk_locations`` consecutive store rows
    (a multiple of the store's 64-row Zarr chunks, so chunks never share a Zarr chunk); each chunk is tiled
    (a Dask task when ``client`` is given, written by the worker) and writes its region of a partial store
    ``.partial-chips.zarr`` plus a completion marker. A rerun with the same inputs and settings skips the
    finished chunks. At the end the partial store becomes ``chips.zarr`` and the manifest is written (last).
    Memory is bounded by one chunk per worker, whatever the number of locations.
    """
    import hashlib
    import json

    import zarr

    from ..core.compute import run_ordered

    if chunk_locations % 64:
        raise TilingError("chunk_locations", "a multiple of 64", str(chunk_locations), "use e.g. 4096")
    store = ChipStorePaths(Path(out_dir))
    store.root.mkdir(parents=True, exist_ok=True)
    if store.manifest.exists():
        store.manifest.unlink()  # the store is incomplete until the new manifest is written
    loc_ids = np.asarray([str(i) for i in location_ids], dtype=object)
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    offsets = jitter_offsets(len(loc_ids), list(cfg.jitter_m) or None, cfg.jitter_seed)
    _, covered = plan_jobs(catalog, lon, lat, offsets, cfg.block_px, coverage_margin(cfg.scales))
    if cfg.on_outside == "error" and not covered.all():  # fail before writing anything
        raise outside_error(catalog, list(loc_ids), lon, lat, covered)
    if not covered.any():
        raise outside_error(catalog, list(loc_ids), lon, lat, covered, every=True)
    scales, copy_offsets = jitter_copies(cfg, len(loc_ids))
    # one site per distinct (coordinate, displacements): locations sharing one are tiled and embedded once
    key = np.column_stack([lon, lat, offsets] + list(copy_offsets.values()))
    _, first, site_of = np.unique(key, axis=0, return_index=True, return_inverse=True)
    by_first = np.argsort(first)  # sites in order of first appearance
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    site_of, first = rank[site_of.reshape(-1)], first[by_first]
    ids, lon, lat, offsets = loc_ids[first], lon[first], lat[first], offsets[first]
    copy_offsets = {k: v[first] for k, v in copy_offsets.items()}
    order = _spatial_order(catalog, lon, lat, cfg.block_px, coverage_margin(scales))
    ids, lon, lat, offsets = ids[order], lon[order], lat[order], offsets[order]
    copy_offsets = {k: v[order] for k, v in copy_offsets.items()}
    row_of_site = np.empty_like(order)
    row_of_site[order] = np.arange(len(order))
    row_of_location = row_of_site[site_of]
    scenes = list(catalog.scenes)
    kw = dict(resampling=cfg.resampling, radiometry=cfg.radiometry, block_px=cfg.block_px, workers=cfg.workers,
              on_outside="drop")
    plan = {"ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "xy": hashlib.sha256(np.ascontiguousarray(np.c_[lon, lat, offsets]).tobytes()).hexdigest(),
            "scenes": [[sc.name, list(sc.paths), sc.width, sc.height, list(sc.transform)] for sc in scenes],
            "scales": [[sc.name, sc.size_m, sc.px] for sc in scales], "kw": repr(sorted(kw.items())),
            "copies": hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes()
                                              for v in copy_offsets.values())).hexdigest(),
            "chunk": chunk_locations}
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    partial = store.partial
    plan_file = ChipStorePaths.plan_digest(partial)
    if not (plan_file.exists() and plan_file.read_text() == digest):
        if partial.exists():
            shutil.rmtree(partial)
        group = zarr.open_group(str(partial), mode="w")
        count = scenes[0].count
        for sc in scales:
            group.create_array(sc.name, shape=(len(ids), count, sc.px, sc.px), chunks=(64, count, sc.px, sc.px),
                               dtype="float32", fill_value=np.nan, compressors=chip_codec())
        ChipStorePaths.chunk_marker(partial, 0).parent.mkdir()
        plan_file.write_text(digest)
    starts = list(range(0, len(ids), chunk_locations))
    todo = [st for st in starts if not ChipStorePaths.chunk_marker(partial, st).exists()]
    items = [(str(partial), st, list(ids[st: st + chunk_locations]), lon[st: st + chunk_locations],
              lat[st: st + chunk_locations], offsets[st: st + chunk_locations], scenes, list(scales), kw,
              {k: v[st: st + chunk_locations] for k, v in copy_offsets.items()} or None)
             for st in todo]
    if client is None and progress and items:
        from tqdm import tqdm
        for item in tqdm(items, desc="tiling chunks", unit="chunk"):
            _tile_chunk(*item)
    else:
        run_ordered(client, _tile_chunk, items)
    sites = pd.concat([pd.read_parquet(ChipStorePaths.chunk_marker(partial, st)) for st in starts],
                      ignore_index=True).drop(columns="location_id")
    scale_rank = {sc.name: i for i, sc in enumerate(scales)}
    per_location = pd.DataFrame({"location_id": loc_ids, "index": row_of_location})
    manifest = per_location.merge(sites, on="index", how="left", validate="many_to_many")
    manifest = manifest.sort_values(["scale", "index"], kind="stable",
                                    key=lambda c: c.map(scale_rank) if c.name == "scale" else c).reset_index(drop=True)
    check_imagery(manifest, scales)  # before the store is complete: a failed check leaves no manifest
    if store.chips.exists():
        shutil.rmtree(store.chips)
    shutil.rmtree(ChipStorePaths.chunk_marker(partial, 0).parent)
    plan_file.unlink()
    os.replace(partial, store.chips)
    write_with(store.locations, lambda t: per_location.rename(columns={"index": "row"}).to_parquet(t, index=False))
    write_with(store.manifest, lambda t: manifest.to_parquet(t, index=False))
    return manifest


def check_imagery(manifest: pd.DataFrame, scales: Sequence[ScaleConfig]) -> None:
    """Stop when the scenes hold no valid pixel in any window of the locations they cover (a scene that is
    all nodata or all cloud there): the study would be a covariates-only result labelled multi-scale.

    Raises:
        ImageryError: naming the scales and the scenes.
    """
    kept = manifest[~manifest["dropped"]]
    if len(kept) and (kept["valid_fraction"] <= 0).all():
        scenes = sorted(set(kept["scene"]) - {""})[:3]
        raise ImageryError("scenes", "valid pixels in the windows of the trial locations",
                           f"valid fraction 0 in every window of every scale ({', '.join(s.name for s in scales)}) "
                           f"of {kept['location_id'].nunique()} locations in {scenes}: no imagery",
                           "check the scenes' nodata value, cloud masks and footprint (tile.nodata, data.scenes)")
