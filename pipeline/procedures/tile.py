"""Procedure ``tile``: multi-scale chips around every location of a study, into its chip store."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import pandas as pd

from ..core.artifacts import write_with
from ..core.compute import dask_client
from ..core.config import Config, JitterCopiesConfig, TileConfig
from ..core.layout import ChipStorePaths, StudyLayout
from ..core.units import locations_table, read_units, resolve_data_root
from ..imagery.scenes import SceneCatalog, resolve_scene_paths
from ..imagery.tiling import tile_to_store


def study_scenes(cfg: Config, out: str | os.PathLike, params_dir: str | os.PathLike) -> list[str]:
    """The scene files of a study: ``data.scenes`` (files or globs) relative to the data folder of a real
    study, else the simulation's scenes."""
    if cfg.data.scenes:
        root = resolve_data_root(cfg.data, Path(params_dir))
        return resolve_scene_paths(cfg.data.scenes, base=root)
    return resolve_scene_paths(["*.tif"], base=StudyLayout(out).simulated_scenes)


def tile_points(locations: gpd.GeoDataFrame, scene_paths: Sequence[str], cfg: TileConfig,
                store_dir: str | os.PathLike, progress: bool = True, client=None) -> pd.DataFrame:
    """Tile point ``locations`` (``location_id``, geometry in EPSG:4326) at every scale of ``cfg`` into the
    chip store at ``store_dir`` (resumable); also write the scenes' footprints there. Returns the manifest."""
    catalog = SceneCatalog.from_paths(scene_paths, bands=list(cfg.bands) or None)
    manifest = tile_to_store(catalog, locations["location_id"].astype(str).tolist(), locations.geometry.x.to_numpy(),
                             locations.geometry.y.to_numpy(), cfg, store_dir, client=client, progress=progress)
    write_with(ChipStorePaths(Path(store_dir)).scenes, lambda t: catalog.footprints().to_parquet(t, index=False))
    return manifest


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
    with dask_client(cfg.compute) as client:
        return tile_study(units_path or layout.units, scenes, cfg.tile, layout.tile.root, progress, client)


def points_config(cfg: TileConfig, scales: Sequence[str]) -> TileConfig:
    """``cfg`` restricted to the named scales, without jitter, dropping (and counting) locations outside
    every scene: the tiling of new locations for an extrapolation."""
    return replace(cfg, scales=tuple(s for s in cfg.scales if s.name in scales), jitter_m=(),
                   jitter_copies=JitterCopiesConfig(), on_outside="drop")
