"""Procedure ``tile``: multi-scale chips around every location of a study, into its chip store."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import pandas as pd

from ..core.artifacts import write_json, write_with
from ..core.compute import dask_client
from ..core.config import Config, JitterCopiesConfig, TileConfig
from ..core.errors import warn_all
from ..core.layout import ChipStorePaths, StudyLayout
from ..core.units import locations_table, read_units, resolve_data_root
from ..estimate.cate import check_trial_design
from ..imagery.scenes import SceneCatalog, resolve_scene_paths
from ..imagery.tiling import coverage_margin, jitter_offsets, plan_jobs, tile_to_store


def study_scenes(cfg: Config, out: str | os.PathLike, params_dir: str | os.PathLike) -> list[str]:
    """The scene files of a study: ``data.scenes`` (files or globs) relative to the data folder of a real
    study, else the simulation's scenes."""
    if cfg.data.scenes:
        root = resolve_data_root(cfg.data, Path(params_dir))
        return resolve_scene_paths(cfg.data.scenes, base=root)
    return resolve_scene_paths(["*.tif"], base=StudyLayout(out).simulated_scenes)


MOSTLY_INVALID = 0.5  # a scale whose median valid fraction is below this is reported
ZERO_FILL = 0.01  # share of a window with exact-zero DNs in every band that suggests an undeclared fill


def open_catalog(scene_paths: Sequence[str], cfg: TileConfig) -> SceneCatalog:
    """The scenes of ``cfg`` (band selection and nodata override applied)."""
    return SceneCatalog.from_paths(scene_paths, bands=list(cfg.bands) or None,
                                   nodata=None if cfg.nodata == "file" else float(cfg.nodata))


def tiling_findings(manifest: pd.DataFrame, catalog: SceneCatalog, cfg: TileConfig) -> list[str]:
    """What a reader of the results must know about the chips (each becomes a warning): stacked band files,
    dropped locations, windows larger than a scene, scales whose windows are mostly invalid, and exact-zero
    pixels in every band (a 0-DN fill the files do not declare as nodata)."""
    found = list(catalog.notes)
    locs = manifest.drop_duplicates("location_id")
    n_dropped = int(locs["dropped"].sum())
    if n_dropped:
        found.append(f"{n_dropped} of {len(locs)} locations are outside every scene and were dropped "
                     "(tile.on_outside: drop); their units are left out of every later stage")
    kept = manifest[~manifest["dropped"]]
    extents = {sc.name: (sc.width * abs(sc.transform[0]) * sc.metres_per_unit([sc.bounds[1]])[0][0],
                         sc.height * abs(sc.transform[4]) * sc.metres_per_unit([sc.bounds[1]])[1][0])
               for sc in catalog.scenes}
    for s in cfg.scales:
        rows = kept[kept["scale"] == s.name]
        if not len(rows):
            continue
        used = [n for n in rows["scene"].unique() if n in extents]
        larger = [n for n in used if s.size_m > min(extents[n])]
        if larger:
            w, h = extents[larger[0]]
            found.append(f"scale {s.name}: its {s.size_m:g} m windows are larger than scene {larger[0]} "
                         f"({w:,.0f} x {h:,.0f} m): part of every window is outside the imagery "
                         f"(median valid fraction {rows['valid_fraction'].median():.2f})")
        median = float(rows["valid_fraction"].median())
        if median < MOSTLY_INVALID and not larger:
            found.append(f"scale {s.name}: windows are mostly invalid (median valid fraction {median:.2f} over "
                         f"{len(rows)} locations: outside the scenes, nodata or clouds)")
        if "zero_fraction" in rows:
            zero = rows["zero_fraction"].to_numpy()
            n_zero = int((zero > ZERO_FILL).sum())
            if n_zero:
                found.append(f"scale {s.name}: {n_zero} of {len(rows)} windows hold pixels that are exactly 0 in "
                             f"every band (up to {zero.max():.0%} of a window), counted as valid: a 0-DN fill "
                             "without a nodata value? Set tile.nodata: 0 (mscate init --nodata 0) if so")
    return found


def tile_points(locations: gpd.GeoDataFrame, scene_paths: Sequence[str], cfg: TileConfig,
                store_dir: str | os.PathLike, progress: bool = True, client=None) -> pd.DataFrame:
    """Tile point ``locations`` (``location_id``, geometry in EPSG:4326) at every scale of ``cfg`` into the
    chip store at ``store_dir`` (resumable); also write the scenes' footprints and the tiling report (counts
    and warnings) there. Returns the manifest."""
    catalog = open_catalog(scene_paths, cfg)
    manifest = tile_to_store(catalog, locations["location_id"].astype(str).tolist(), locations.geometry.x.to_numpy(),
                             locations.geometry.y.to_numpy(), cfg, store_dir, client=client, progress=progress)
    store = ChipStorePaths(Path(store_dir))
    write_with(store.scenes, lambda t: catalog.footprints().to_parquet(t, index=False))
    warned = warn_all(tiling_findings(manifest, catalog, cfg))
    locs = manifest.drop_duplicates("location_id")
    valid = {s: float(g["valid_fraction"].median()) for s, g in manifest[~manifest["dropped"]].groupby("scale")}
    write_json(store.report, {"n_locations": int(len(locs)), "n_sites": int(locs["index"].nunique()),
                              "n_dropped": int(locs["dropped"].sum()), "median_valid_fraction": valid,
                              "scenes": [sc.name for sc in catalog.scenes], "warnings": warned})
    return manifest


def check_kept_design(units: gpd.GeoDataFrame, scene_paths: Sequence[str], cfg: Config) -> None:
    """With ``tile.on_outside: drop``, check before any chip is cut that the units left inside the scenes
    still support the cross-fitting design (not only after tiling and embedding, at the cate stage)."""
    if cfg.tile.on_outside != "drop":
        return
    locs = locations_table(units)
    catalog = open_catalog(scene_paths, cfg.tile)
    lon, lat = locs.geometry.x.to_numpy(), locs.geometry.y.to_numpy()
    offsets = jitter_offsets(len(locs), list(cfg.tile.jitter_m) or None, cfg.tile.jitter_seed)
    _, covered = plan_jobs(catalog, lon, lat, offsets, cfg.tile.block_px, coverage_margin(cfg.tile.scales))
    if covered.all() or not covered.any():
        return  # all kept (checked at ingest), or none (tiling names the problem)
    kept = units[units["location_id"].astype(str).isin(set(locs["location_id"].astype(str)[covered]))]
    check_trial_design(kept["W"].to_numpy(), kept["cluster_id"].astype(str).to_numpy(), cfg.cate.folds, cfg.seed)


def tile_study(units_path: str | os.PathLike, scene_paths: Sequence[str], cfg: TileConfig,
               out_dir: str | os.PathLike, progress: bool = True, client=None) -> pd.DataFrame:
    """Tile every location of a units file at every scale of ``cfg`` into the chip store (resumable)."""
    return tile_points(locations_table(read_units(units_path)), scene_paths, cfg, out_dir, progress, client)


def run(cfg: Config, out: str | os.PathLike, params_dir: str | os.PathLike, *, units_path=None,
        scene_paths: Sequence[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """The tile stage: the study's units (or ``units_path``) and scenes (or ``scene_paths``) into
    ``out/tile``, on the compute backend of ``cfg.compute``."""
    layout = StudyLayout(out)
    scenes = list(scene_paths) if scene_paths else study_scenes(cfg, out, params_dir)
    check_kept_design(read_units(units_path or layout.units), scenes, cfg)
    with dask_client(cfg.compute) as client:
        return tile_study(units_path or layout.units, scenes, cfg.tile, layout.tile.root, progress, client)


def points_config(cfg: TileConfig, scales: Sequence[str]) -> TileConfig:
    """``cfg`` restricted to the named scales, without jitter, dropping (and counting) locations outside
    every scene: the tiling of new locations for an extrapolation."""
    return replace(cfg, scales=tuple(s for s in cfg.scales if s.name in scales), jitter_m=(),
                   jitter_copies=JitterCopiesConfig(), on_outside="drop")
