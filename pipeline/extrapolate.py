"""CATE predictions at locations without trial units (transportability), clearly labelled as extrapolation.

Where only some scales can be imaged (e.g. small windows around non-experimental locations), a CATE model
is fitted on the trial's units with the embeddings of those scales only (no covariates: the new locations
have none) and predicts the CATE, with its 95 % interval, at the new locations. Nothing here is validated
against outcomes at the new locations: the predictions carry the model's assumptions (the same
effect-modifying relation holds there), and are reported and mapped as extrapolation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from .artifacts import read_npy, require, write_with
from .errors import ConfigError


def extrapolate_cate(study_out: str | os.PathLike, cfg, new_locations: gpd.GeoDataFrame,
                     new_scenes: Sequence[str], out_dir: str | os.PathLike) -> gpd.GeoDataFrame:
    """Fit on the study's units with ``cfg.extrapolate.scales`` only; predict at ``new_locations``.

    Writes ``extrapolation.parquet`` (location_id, kind, tau_hat, lower, upper, geometry) and
    ``cate_map.png`` under ``out_dir``.
    """
    from models import create_encoder

    from .cate import make_learner
    from .concat import concat_features
    from .embedding import embed_chips
    from .imagery import SceneCatalog
    from .report import plot_extrapolation_map
    from .sites import read_units
    from .tiling import tile_locations

    study_out, out = Path(study_out), Path(out_dir)
    scales = [s for s in cfg.tile.scales if s.name in cfg.extrapolate.scales]
    missing = sorted(set(cfg.extrapolate.scales) - {s.name for s in scales})
    if missing or not scales:
        raise ConfigError("extrapolate.scales", f"tiled scales among {[s.name for s in cfg.tile.scales]}",
                          f"{list(cfg.extrapolate.scales)}", "name the scales available at the new locations")
    units = read_units(study_out / "prepare" / "units.parquet")
    locations = pd.read_parquet(require(study_out / "tile" / "locations.parquet", "the study's chip store"))
    pos = pd.Series(np.arange(len(locations)), index=locations["location_id"].astype(str))
    loc_idx = pos.reindex(units["location_id"].astype(str)).to_numpy().astype(np.int64)
    encoders = list(cfg.features.encoders)
    train_emb = {(e, s.name): read_npy(study_out / "embed" / e / f"{s.name}.npy") for e in encoders for s in scales}
    X, _ = concat_features(train_emb, [s.name for s in scales], encoders, loc_idx)

    cat = SceneCatalog.from_paths(new_scenes, bands=list(cfg.tile.bands) or None)
    ids = new_locations["location_id"].astype(str).tolist()
    chips = tile_locations(cat, ids, new_locations.geometry.x.to_numpy(), new_locations.geometry.y.to_numpy(),
                           scales, cfg.tile.resampling, radiometry=cfg.tile.radiometry, on_outside="drop")
    kept = np.array([i for i, loc in enumerate(ids) if loc not in set(chips.dropped)], dtype=np.int64)
    bands = next(iter(chips.chips.values())).shape[1]
    new_emb = {}
    for e in encoders:
        enc = create_encoder(e, in_chans=bands, seed=cfg.seed)
        for s in scales:
            new_emb[(e, s.name)] = embed_chips(enc, chips.chips[s.name][kept], cfg.embed.batch_size, cfg.embed.device)
    X_new, _ = concat_features(new_emb, [s.name for s in scales], encoders, np.arange(len(kept)))

    learner = make_learner(cfg.cate, cfg.seed)
    learner.fit(units["Y"].to_numpy(float), units["W"].to_numpy(int), X=X,
                groups=units["cluster_id"].astype(str).to_numpy())
    tau = learner.effect(X_new)
    lo, hi = learner.effect_interval(X_new, alpha=0.05)
    new = new_locations.iloc[kept]
    pred = gpd.GeoDataFrame({"location_id": new["location_id"].astype(str).to_numpy(), "kind": "extrapolation",
                             "tau_hat": tau, "lower": np.ravel(lo), "upper": np.ravel(hi)},
                            geometry=new.geometry.to_numpy(), crs=new_locations.crs)
    cate = pd.read_parquet(require(study_out / "cate" / "cate.parquet", "the study's cate.parquet"))
    ref = cfg.cate.dr_reference
    trial = (cate[cate["set"] == ref].groupby(cate["unit_id"].map(dict(zip(units["unit_id"].astype(str),
                                                                             units["location_id"].astype(str)))))
             [["tau_hat", "lower", "upper"]].mean())
    geo = units.drop_duplicates("location_id").set_index(units.drop_duplicates("location_id")["location_id"].astype(str))
    trial_gdf = gpd.GeoDataFrame({"location_id": trial.index, "kind": "trial (out-of-fold)",
                                  "tau_hat": trial["tau_hat"].to_numpy(), "lower": trial["lower"].to_numpy(),
                                  "upper": trial["upper"].to_numpy()},
                                 geometry=geo.loc[trial.index].geometry.to_numpy(), crs=units.crs)
    both = pd.concat([trial_gdf, pred], ignore_index=True)
    both = gpd.GeoDataFrame(both, geometry="geometry", crs=units.crs)
    write_with(out / "extrapolation.parquet", lambda t: both.to_parquet(t, index=False))
    write_with(out / "cate_map.png", lambda t: plot_extrapolation_map(
        both, t, note=f"extrapolation: forest using only {', '.join(s.name for s in scales)} spectral features"))
    return both
