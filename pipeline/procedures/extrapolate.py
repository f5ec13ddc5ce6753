"""Procedure ``extrapolate``: CATE predictions at locations without trial units (transportability), clearly
labelled as extrapolation.

Where only some scales can be imaged (e.g. small windows around non-experimental locations), a CATE model
is fitted on the trial's units with the embeddings of those scales only (no covariates: the new locations
have none) and predicts the CATE, with its 95 % interval, at the new locations. The new locations go
through the same tile and embed procedures as the trial's (into the extrapolation's own chip store and
embeddings), and the model is the cate stage's estimator. Nothing here is validated against outcomes at
the new locations: the predictions carry the model's assumptions (the same effect-modifying relation holds
there), and are reported and mapped as extrapolation.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from ..core.artifacts import read_npy, require, write_with
from ..core.config import Config
from ..core.errors import ConfigError, UnitsError
from ..core.layout import ExtrapolationPaths, StudyLayout
from ..core.units import read_units
from ..estimate.cate import make_learner
from ..estimate.concat import concat_features
from ..imagery.scenes import resolve_scene_paths
from ..report.figures import plot_extrapolation_map
from .embed import embed_study
from .features import location_rows
from .tile import points_config, tile_points


def extrapolate_cate(study_out: str | os.PathLike, cfg: Config, new_locations: gpd.GeoDataFrame,
                     new_scenes: Sequence[str], out_dir: str | os.PathLike) -> gpd.GeoDataFrame:
    """Fit on the study's units with ``cfg.extrapolate.scales`` only; predict at ``new_locations``.

    Writes the predictions (location_id, kind, tau_hat, lower, upper, geometry; trial locations with their
    out-of-fold CATEs, then the new ones) and a map, with the new locations' chip store and embeddings,
    under ``out_dir`` (:class:`~pipeline.core.layout.ExtrapolationPaths`).
    """
    study, paths = StudyLayout(study_out), ExtrapolationPaths(Path(out_dir))
    scales = [s.name for s in cfg.tile.scales if s.name in cfg.extrapolate.scales]
    missing = sorted(set(cfg.extrapolate.scales) - set(scales))
    if missing or not scales:
        raise ConfigError("extrapolate.scales", f"tiled scales among {[s.name for s in cfg.tile.scales]}",
                          f"{list(cfg.extrapolate.scales)}", "name the scales available at the new locations")
    encoders = list(cfg.features.encoders)
    units = read_units(study.units)
    loc_idx = location_rows(units["location_id"], study.tile, str(study.units))
    train_emb = {(e, s): read_npy(study.embed.array(e, s)) for e in encoders for s in scales}
    X, _ = concat_features(train_emb, scales, encoders, loc_idx)

    manifest = tile_points(new_locations, new_scenes, points_config(cfg.tile, scales), paths.tile.root,
                           progress=False)
    embed_study(paths.tile.root, replace(cfg.embed, encoders=tuple(encoders)), cfg.seed, paths.embed.root,
                progress=False, pretrain_dir=study.pretrain.root, fitted_from=study.embed.root)
    dropped = set(manifest.loc[manifest["dropped"], "location_id"].astype(str))
    ids = new_locations["location_id"].astype(str)
    kept = np.flatnonzero(~ids.isin(dropped).to_numpy())
    if not len(kept):
        raise UnitsError("extrapolate: locations", "new locations inside the given scenes",
                         f"all {len(ids)} outside", "pass scenes that cover the new locations")
    rows = location_rows(ids.iloc[kept], paths.tile, "extrapolate: locations")
    new_emb = {(e, s): read_npy(paths.embed.array(e, s)) for e in encoders for s in scales}
    X_new, _ = concat_features(new_emb, scales, encoders, rows)

    learner = make_learner(cfg.cate, cfg.seed)
    learner.fit(units["Y"].to_numpy(float), units["W"].to_numpy(int), X=X,
                groups=units["cluster_id"].astype(str).to_numpy())
    tau = learner.effect(X_new)
    lo, hi = learner.effect_interval(X_new, alpha=0.05)
    new = new_locations.iloc[kept]
    pred = gpd.GeoDataFrame({"location_id": new["location_id"].astype(str).to_numpy(), "kind": "extrapolation",
                             "tau_hat": tau, "lower": np.ravel(lo), "upper": np.ravel(hi)},
                            geometry=new.geometry.to_numpy(), crs=new_locations.crs)
    cate = pd.read_parquet(require(study.cate.table, "the study's CATE table"))
    ref = cfg.cate.dr_reference
    loc_of_unit = dict(zip(units["unit_id"].astype(str), units["location_id"].astype(str)))
    trial = (cate[cate["set"] == ref].groupby(cate["unit_id"].map(loc_of_unit))[["tau_hat", "lower", "upper"]]
             .mean())
    first = units.drop_duplicates("location_id")
    geo = first.set_index(first["location_id"].astype(str))
    trial_gdf = gpd.GeoDataFrame({"location_id": trial.index, "kind": "trial (out-of-fold)",
                                  "tau_hat": trial["tau_hat"].to_numpy(), "lower": trial["lower"].to_numpy(),
                                  "upper": trial["upper"].to_numpy()},
                                 geometry=geo.loc[trial.index].geometry.to_numpy(), crs=units.crs)
    both = gpd.GeoDataFrame(pd.concat([trial_gdf, pred], ignore_index=True), geometry="geometry", crs=units.crs)
    write_with(paths.table, lambda t: both.to_parquet(t, index=False))
    write_with(paths.map_png, lambda t: plot_extrapolation_map(
        both, t, note=f"extrapolation: forest using only {', '.join(scales)} {'/'.join(encoders)} features"))
    return both


def run(cfg: Config, out: str | os.PathLike, locations_path: str | os.PathLike,
        scene_patterns: Sequence[str]) -> gpd.GeoDataFrame:
    """The extrapolate stage: new locations (a GeoParquet of ``location_id`` and points) and the scenes
    covering them, into ``out/extrapolate``."""
    if not Path(locations_path).is_file():
        raise UnitsError(str(locations_path), "a GeoParquet of new locations", "no such file",
                         "run the step that writes it")
    locations = gpd.read_parquet(locations_path)
    return extrapolate_cate(out, cfg, locations, resolve_scene_paths(scene_patterns), StudyLayout(out).extrapolate.root)
