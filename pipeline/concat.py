"""Multi-scale Concatenation (Zhu, Jerzak & Daoud, CLeaR 2025, arXiv:2411.02134).

A scale set is a subset of the tiled scales. Its feature matrix joins, for every unit, the embeddings of
the unit's location at each scale of the set (for each chosen encoder), then the unit's pre-treatment
covariates. Any single-scale CATE learner fitted on this matrix becomes a multi-scale learner.

Scale-set specifications:

* ``singles`` — one set per scale (named by the scale);
* ``pairs`` — every pair of scales (``a+b``);
* ``all`` — all tiled scales (named ``all``);
* an explicit ``a+b+c`` naming tiled scales.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import ConfigError


def resolve_scale_sets(specs: Sequence[str], scales: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Expand scale-set specifications into ``{set name: scales}`` (insertion-ordered, no duplicates).

    Raises:
        ConfigError: naming the specification when it names a scale that was not tiled.
    """
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        if spec == "singles":
            for s in scales:
                out[s] = (s,)
        elif spec == "pairs":
            for a, b in itertools.combinations(scales, 2):
                out[f"{a}+{b}"] = (a, b)
        elif spec == "all":
            out["all"] = tuple(scales)
        else:
            parts = tuple(spec.split("+"))
            unknown = [p for p in parts if p not in scales]
            if unknown:
                raise ConfigError(f"features.scale_sets: {spec!r}", f"scales among {list(scales)}",
                                  f"unknown {unknown}", "name tiled scales, or use singles / pairs / all")
            out[spec] = parts
    return out


def concat_features(embeddings: Mapping[tuple[str, str], np.ndarray], scale_set: Sequence[str],
                    encoders: Sequence[str], unit_location_index: np.ndarray,
                    covariates: np.ndarray | None = None, covariate_names: Sequence[str] = (),
                    embedding_names: Mapping[tuple[str, str], Sequence[str]] | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """Build the unit-level feature matrix of one scale set.

    Args:
        embeddings: ``{(encoder, scale): (n_locations, dim)}``.
        scale_set: scales to join, in order.
        encoders: encoders to join at each scale.
        unit_location_index: (n_units,) row of each unit's location in the embedding arrays.
        covariates: optional (n_units, p) pre-treatment covariates, appended last.
        covariate_names: their names.
        embedding_names: optional column names per embedding (default ``d0, d1, ...``).

    Returns:
        (n_units, total_dim) float64 matrix and its column names ``encoder:scale:feature``.
    """
    blocks, names = [], []
    for scale in scale_set:
        for enc in encoders:
            emb = embeddings[(enc, scale)]
            blocks.append(emb[unit_location_index])
            cols = (embedding_names or {}).get((enc, scale)) or [f"d{i}" for i in range(emb.shape[1])]
            names += [f"{enc}:{scale}:{c}" for c in cols]
    if covariates is not None and covariates.shape[1]:
        blocks.append(covariates)
        names += [f"cov:{c}" for c in covariate_names]
    return np.hstack(blocks).astype(np.float64), names


def reduce_embedding(emb: np.ndarray, standardize: bool, pca: int, where: str) -> tuple[np.ndarray, dict]:
    """Per-scale reduction before concatenation, fitted on locations without outcomes (so fitting it on
    every location is honest): drop constant columns, optionally standardise, optionally PCA to ``pca``.

    Raises:
        ConfigError: more PCA components than locations or than (non-constant) columns.
    """
    info: dict = {}
    keep = np.ptp(emb, axis=0) > 0
    if not keep.all():
        info["dropped_constant_columns"] = int((~keep).sum())
        emb = emb[:, keep]
    if standardize:
        emb = (emb - emb.mean(axis=0)) / emb.std(axis=0)
    if pca:
        limit = min(emb.shape)
        if pca > limit:
            raise ConfigError("features.pca", f"at most min(locations, columns) = {limit} components for {where}",
                              str(pca), f"set features.pca to {limit} or fewer")
        from sklearn.decomposition import PCA

        model = PCA(n_components=pca, svd_solver="full").fit(emb)
        emb = model.transform(emb)
        info["pca_explained_variance"] = float(model.explained_variance_ratio_.sum())
    return emb, info


def build_features(units_path: str | os.PathLike, tile_dir: str | os.PathLike, embed_dir: str | os.PathLike,
                   cfg, out_dir: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Write one unit-level feature matrix per scale set (``<set>.npy``) and ``index.json`` (unit ids, the
    scales and column names of every set). ``cfg`` is a ``FeaturesConfig``."""
    import pandas as pd

    from .artifacts import read_npy, require, write_json, write_npy
    from .errors import UnitsError
    from .sites import covariate_columns, read_units

    units = read_units(units_path)
    tile_dir, embed_dir, out = Path(tile_dir), Path(embed_dir), Path(out_dir)
    locations = pd.read_parquet(require(tile_dir / "locations.parquet", "the chip store's location list"))
    manifest = pd.read_parquet(require(tile_dir / "manifest.parquet", "the chip store's manifest"))
    all_scales = list(dict.fromkeys(manifest["scale"]))
    scales = [s for s in all_scales if "@j" not in s]  # jittered copies join their scale (features.jitter)
    copies = {s: [c for c in all_scales if c.startswith(f"{s}@j")] for s in scales}
    dropped_locs = set(manifest.loc[manifest.get("dropped", False) == True, "location_id"].astype(str))  # noqa: E712
    keep = ~units["location_id"].astype(str).isin(dropped_locs)
    n_dropped = int((~keep).sum())
    if n_dropped:
        print(f"features: dropping {n_dropped} units at {len(dropped_locs)} locations outside every scene "
              f"(tile.on_outside: drop)")
        units = units[keep.to_numpy()].reset_index(drop=True)
    pos = pd.Series(np.arange(len(locations)), index=locations["location_id"].astype(str))
    loc_idx = pos.reindex(units["location_id"].astype(str)).to_numpy()
    if np.isnan(loc_idx.astype(float)).any():
        missing = units.loc[np.isnan(loc_idx.astype(float)), "location_id"].unique()[:5].tolist()
        raise UnitsError(str(units_path), "every unit's location in the chip store",
                         f"untiled locations {missing}", "re-run the tile stage on this units file")
    loc_idx = loc_idx.astype(np.int64)
    embeddings, emb_names, reduction = {}, {}, {}
    for enc in cfg.encoders:
        names_path = require(embed_dir / enc / "feature_names.json",
                             f"embeddings of encoder {enc!r} (list it under embed.encoders)")
        for s in scales:
            emb = read_npy(embed_dir / enc / f"{s}.npy")
            names = json.loads(names_path.read_text())
            if cfg.jitter != "none" and copies[s]:
                jittered = [read_npy(embed_dir / enc / f"{c}.npy") for c in copies[s]]
                if cfg.jitter == "mean":  # the window and its jittered copies, averaged
                    emb = np.mean([emb] + jittered, axis=0)
                else:  # concatenated: the window, then each copy
                    emb = np.hstack([emb] + jittered)
                    names = names + [f"{n}@j{i}" for i in range(len(jittered)) for n in names]
            if cfg.standardize or cfg.pca or np.any(np.ptp(emb, axis=0) == 0):
                keep = np.ptp(emb, axis=0) > 0
                emb, info = reduce_embedding(emb, cfg.standardize, cfg.pca, f"{enc}:{s}")
                names = [f"pc{i}" for i in range(emb.shape[1])] if cfg.pca else [n for n, k in zip(names, keep) if k]
                reduction[f"{enc}:{s}"] = info
            embeddings[(enc, s)] = emb
            emb_names[(enc, s)] = names
    sets = resolve_scale_sets(cfg.scale_sets, scales)
    cov_cols = covariate_columns(units) if cfg.covariates else []
    cov = units[cov_cols].to_numpy(dtype=np.float64) if cov_cols else None
    index = {"unit_id": units["unit_id"].astype(str).tolist(), "encoders": list(cfg.encoders),
             "dropped_units": n_dropped, "dropped_locations": sorted(dropped_locs), "reduction": reduction,
             "sets": {}}
    for name, scale_set in sets.items():
        X, cols = concat_features(embeddings, scale_set, cfg.encoders, loc_idx, cov, cov_cols, emb_names)
        write_npy(out / f"{name}.npy", X)
        index["sets"][name] = {"scales": list(scale_set), "columns": cols}
    write_json(out / "index.json", index)
    return sets


class MultiScaleLearner:
    """Multi-scale Concatenation around any single-scale CATE learner.

    The learner must have econml's shape: ``fit(Y, T, *, X, W=None, groups=None)``, ``effect(X)`` and
    optionally ``effect_interval(X, alpha=...)``. ``X`` is given per scale, as a mapping
    ``{scale name: (n, d_scale) array}``; the wrapper joins the scales of ``scale_set`` (in that order,
    optionally reduced per scale with :func:`reduce_embedding`, fitted on the training X only) and fits a
    copy of the learner on the joined matrix, so any single-scale learner becomes a multi-scale one.

    Args:
        learner: an unfitted CATE learner (it is copied, never modified).
        scale_set: scales to join; None = every scale given to ``fit``, in sorted order.
        standardize, pca: optional per-scale reduction (see :func:`reduce_embedding`).
    """

    def __init__(self, learner, scale_set: Sequence[str] | None = None, standardize: bool = False, pca: int = 0):
        self.learner = learner
        self.scale_set = scale_set
        self.standardize = standardize
        self.pca = pca

    def _join(self, X: Mapping[str, np.ndarray], fit: bool) -> np.ndarray:
        missing = [s for s in self.scales_ if s not in X]
        if missing:
            raise ConfigError("X", f"features for scales {list(self.scales_)}", f"missing {missing}",
                              "pass one array per scale of the scale set")
        blocks = []
        for s in self.scales_:
            block = np.asarray(X[s], dtype=np.float64)
            if self.standardize or self.pca:
                if fit:
                    self.reducers_[s] = _fit_reducer(block, self.standardize, self.pca, s)
                block = _apply_reducer(self.reducers_[s], block)
            blocks.append(block)
        return np.hstack(blocks)

    def fit(self, Y, T, *, X: Mapping[str, np.ndarray], W=None, groups=None):
        import copy

        self.scales_ = tuple(self.scale_set) if self.scale_set is not None else tuple(sorted(X))
        self.reducers_ = {}
        self.learner_ = copy.deepcopy(self.learner)
        self.learner_.fit(Y, T, X=self._join(X, fit=True), W=W, groups=groups)
        return self

    def effect(self, X: Mapping[str, np.ndarray]):
        return self.learner_.effect(self._join(X, fit=False))

    def effect_interval(self, X: Mapping[str, np.ndarray], alpha: float = 0.05):
        return self.learner_.effect_interval(self._join(X, fit=False), alpha=alpha)


def _fit_reducer(block: np.ndarray, standardize: bool, pca: int, where: str) -> dict:
    keep = np.ptp(block, axis=0) > 0
    b = block[:, keep]
    mean, std = (b.mean(axis=0), b.std(axis=0)) if standardize else (np.zeros(b.shape[1]), np.ones(b.shape[1]))
    b = (b - mean) / std
    model = None
    if pca:
        if pca > min(b.shape):
            raise ConfigError("pca", f"at most min(units, columns) = {min(b.shape)} components for scale {where}",
                              str(pca), "lower pca")
        from sklearn.decomposition import PCA

        model = PCA(n_components=pca, svd_solver="full").fit(b)
    return {"keep": keep, "mean": mean, "std": std, "pca": model}


def _apply_reducer(r: dict, block: np.ndarray) -> np.ndarray:
    b = (block[:, r["keep"]] - r["mean"]) / r["std"]
    return r["pca"].transform(b) if r["pca"] is not None else b
