"""Procedure ``features``: Multi-scale Concatenation of per-scale embeddings (plus covariates) per scale set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.artifacts import read_npy, require, write_json, write_npy
from ..core.config import Config
from ..core.errors import UnitsError
from ..core.layout import ChipStorePaths, EmbeddingPaths, FeaturePaths, StudyLayout
from ..core.units import covariate_columns, read_units
from ..estimate.concat import ScaleReducer, concat_features, resolve_scale_sets


def location_embeddings(embed: EmbeddingPaths, encoders, scales, copies: dict, cfg) -> tuple[dict, dict, dict]:
    """Per (encoder, scale): the locations' embedding joined with its jittered copies (``cfg.jitter``) and
    reduced (:class:`ScaleReducer`: constant columns dropped, ``cfg.standardize``, ``cfg.pca`` or the
    encoder's ``cfg.encoder_pca`` entry), with its column names. Returns (embeddings, names, reduction info)."""
    embeddings, emb_names, reduction = {}, {}, {}
    pca_of = {ep.encoder: (ep.pca, f"features.encoder_pca[{i}].pca") for i, ep in enumerate(cfg.encoder_pca)}
    for enc in encoders:
        pca, key = pca_of.get(enc, (cfg.pca, "features.pca"))
        names_path = require(embed.feature_names(enc), f"embeddings of encoder {enc!r} (list it under embed.encoders)")
        for s in scales:
            emb = read_npy(embed.array(enc, s))
            names = json.loads(names_path.read_text())
            if cfg.jitter != "none" and copies.get(s):
                jittered = [read_npy(embed.array(enc, c)) for c in copies[s]]
                if cfg.jitter == "mean":  # the window and its jittered copies, averaged
                    emb = np.mean([emb] + jittered, axis=0)
                else:  # concatenated: the window, then each copy
                    emb = np.hstack([emb] + jittered)
                    names = names + [f"{n}@j{i}" for i in range(len(jittered)) for n in names]
            if cfg.standardize or pca or np.any(np.ptp(emb, axis=0) == 0):
                reducer = ScaleReducer(cfg.standardize, pca, f"{enc}:{s}", key).fit(emb)
                emb = reducer.transform(emb)
                names = ([f"pc{i}" for i in range(emb.shape[1])] if pca
                         else [n for n, k in zip(names, reducer.keep_) if k])
                reduction[f"{enc}:{s}"] = reducer.info()
            embeddings[(enc, s)] = emb
            emb_names[(enc, s)] = names
    return embeddings, emb_names, reduction


def location_rows(location_ids, store: ChipStorePaths, source: str) -> np.ndarray:
    """Row of each location in the chip store (and so in its embeddings); locations at one coordinate share
    a row (their chips are cut and embedded once).

    Raises:
        UnitsError: naming ``source`` when a location was never tiled.
    """
    locations = pd.read_parquet(require(store.locations, "the chip store's location list"))
    rows = locations["row"].to_numpy() if "row" in locations else np.arange(len(locations))
    pos = pd.Series(rows, index=locations["location_id"].astype(str))
    ids = pd.Series(location_ids).astype(str)
    idx = pos.reindex(ids).to_numpy()
    if np.isnan(idx.astype(float)).any():
        missing = ids[np.isnan(idx.astype(float))].unique()[:5].tolist()
        raise UnitsError(source, "every unit's location in the chip store", f"untiled locations {missing}",
                         "re-run the tile stage on this units file")
    return idx.astype(np.int64)


def store_scales(store: ChipStorePaths) -> tuple[list[str], dict[str, list[str]], set[str]]:
    """A chip store's scales (jittered copies ``<scale>@j<i>`` set apart: they join their scale by
    ``features.jitter``), each scale's copies, and the locations the tile stage dropped."""
    manifest = pd.read_parquet(require(store.manifest, "the chip store's manifest"))
    all_scales = list(dict.fromkeys(manifest["scale"]))
    scales = [s for s in all_scales if "@j" not in s]
    copies = {s: [c for c in all_scales if c.startswith(f"{s}@j")] for s in scales}
    dropped = set(manifest.loc[manifest.get("dropped", False) == True, "location_id"].astype(str))  # noqa: E712
    return scales, copies, dropped


def build_features(units_path: str | os.PathLike, tile_dir: str | os.PathLike, embed_dir: str | os.PathLike,
                   cfg, out_dir: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Write one unit-level feature matrix per scale set and the index (unit ids, the scales and column
    names of every set, dropped units, reductions). ``cfg`` is a ``FeaturesConfig``."""
    units = read_units(units_path)
    store, embed, paths = ChipStorePaths(Path(tile_dir)), EmbeddingPaths(Path(embed_dir)), FeaturePaths(Path(out_dir))
    scales, copies, dropped_locs = store_scales(store)
    keep = ~units["location_id"].astype(str).isin(dropped_locs)
    n_dropped = int((~keep).sum())
    if n_dropped:
        print(f"features: dropping {n_dropped} units at {len(dropped_locs)} locations outside every scene "
              f"(tile.on_outside: drop)")
        units = units[keep.to_numpy()].reset_index(drop=True)
    loc_idx = location_rows(units["location_id"], store, str(units_path))
    embeddings, emb_names, reduction = location_embeddings(embed, cfg.encoders, scales, copies, cfg)
    sets = resolve_scale_sets(cfg.scale_sets, scales)
    cov_cols = covariate_columns(units) if cfg.covariates else []
    cov = units[cov_cols].to_numpy(dtype=np.float64) if cov_cols else None
    index = {"unit_id": units["unit_id"].astype(str).tolist(), "encoders": list(cfg.encoders),
             "dropped_units": n_dropped, "dropped_locations": sorted(dropped_locs), "reduction": reduction,
             "sets": {}}
    for name, scale_set in sets.items():
        X, cols = concat_features(embeddings, scale_set, cfg.encoders, loc_idx, cov, cov_cols, emb_names)
        write_npy(paths.matrix(name), X)
        index["sets"][name] = {"scales": list(scale_set), "columns": cols}
    write_json(paths.index, index)
    return sets


def unit_features_by_scale(units_path: str | os.PathLike, tile_dir: str | os.PathLike, embed_dir: str | os.PathLike,
                           cfg, encoder: str) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, list[str]]]:
    """One encoder's embeddings of every scale, as unit-level matrices aligned with the units table: the
    input of :class:`pipeline.estimate.concat.MultiScaleLearner` (``X`` given per scale) or of a learner of
    one's own. Units at locations dropped by the tile stage are left out (as the features stage does); the
    features config's reductions (constant columns, standardisation, PCA, jitter joins) are applied.

    Returns:
        (units, {scale: (n_units, d) array}, {scale: column names}), rows in the order of ``units``.
    """
    units = read_units(units_path)
    store = ChipStorePaths(Path(tile_dir))
    scales, copies, dropped = store_scales(store)
    units = units[~units["location_id"].astype(str).isin(dropped)].reset_index(drop=True)
    rows = location_rows(units["location_id"], store, str(units_path))
    embeddings, names, _ = location_embeddings(EmbeddingPaths(Path(embed_dir)), [encoder], scales, copies, cfg)
    return units, {s: embeddings[(encoder, s)][rows] for s in scales}, {s: names[(encoder, s)] for s in scales}


def run(cfg: Config, out: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """The features stage: units, chip store and embeddings of ``out`` into ``out/features``."""
    layout = StudyLayout(out)
    return build_features(layout.units, layout.tile.root, layout.embed.root, cfg.features, layout.features.root)
