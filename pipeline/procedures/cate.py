"""Procedure ``cate``: cross-fitted causal forests per scale set, out-of-fold CATEs and DR scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.artifacts import read_npy, require, write_json, write_with
from ..core.config import Config
from ..core.errors import ConfigError, EstimationError
from ..core.layout import CatePaths, FeaturePaths, StudyLayout
from ..core.units import read_units
from ..estimate.cate import (
    check_trial_design,
    crossfit_cate,
    dr_scores,
    fit_nuisances,
    importance_by_scale,
    make_folds,
    training_splits,
)


def run_cate(units_path, features_dir, cfg, seed: int, out_dir, progress: bool = True) -> pd.DataFrame:
    """Cross-fit causal forests on every scale set's features and write the cate stage's outputs.

    Two cross-fitting schemes run on the same cluster-grouped folds (shared by all sets):

    * ``kfold`` gives every unit a CATE (``tau_hat``, 95 % interval) from a forest fitted on the other
      folds: for maps, correlations with a known truth and the AIPW ATE;
    * ``sequential`` predicts fold k from folds 0..k-1 only (``priority_seq``, NaN in fold 0): the
      priorities and DR scores (``dr_score_seq``) of the calibrated RATE test (see :mod:`pipeline.procedures.evaluate`).

    Writes (:class:`pipeline.core.layout.CatePaths`) the CATE table (set, unit, cluster, fold, tau_hat,
    lower, upper, priority_seq), the DR table (per unit: W, Y, K-fold DR score, m_hat, propensity, and the
    sequential DR score, all from the ``cfg.dr_reference`` set), the scales of every set, the importance by
    scale and the linear corrections chosen.
    """
    units = read_units(units_path)
    features, paths = FeaturePaths(Path(features_dir)), CatePaths(Path(out_dir))
    index = json.loads(require(features.index, "the features stage's index").read_text())
    ids = units["unit_id"].astype(str)
    unknown = set(index["unit_id"]) - set(ids)
    if unknown:
        raise EstimationError(str(features.index), f"units that are in {units_path}",
                              f"{len(unknown)} unknown unit ids", "re-run the features stage")
    if len(index["unit_id"]) != len(units):  # units dropped upstream (locations outside every scene)
        units = units.set_index(ids.to_numpy()).loc[index["unit_id"]].reset_index(drop=True)
    sets = index["sets"]
    if cfg.dr_reference not in sets:
        raise ConfigError("cate.dr_reference", f"one of the feature sets {list(sets)}", repr(cfg.dr_reference),
                          "name a scale set produced by the features stage")
    Y = units["Y"].to_numpy(dtype=np.float64)
    W = units["W"].to_numpy(dtype=np.int64)
    clusters = units["cluster_id"].astype(str).to_numpy()
    unit_ids = units["unit_id"].astype(str).to_numpy()
    check_trial_design(W, clusters, cfg.folds, seed)
    folds = make_folds(clusters, cfg.folds, seed, treatment=W)
    rows = []
    importance = {}
    corrections = {}
    ref = ref_seq = None
    shared = {"kfold": None, "sequential": None}
    if cfg.shared_nuisance:  # nuisances fitted once on the reference set's features, reused by every set
        Xn = read_npy(features.matrix(cfg.dr_reference))
        shared = {sch: fit_nuisances(Xn, Y, W, clusters, training_splits(folds, sch), cfg, seed + off)
                  for sch, off in (("kfold", 0), ("sequential", 500))}
    for name in sets:
        X = read_npy(features.matrix(name))
        is_ref = name == cfg.dr_reference
        kf = crossfit_cate(X, Y, W, clusters, folds, cfg, seed, with_outcome_model=is_ref, scheme="kfold",
                           progress=progress, desc=f"cate {name} (k-fold)", nuisances=shared["kfold"])
        sq = crossfit_cate(X, Y, W, clusters, folds, cfg, seed + 500, with_outcome_model=is_ref,
                           scheme="sequential", progress=progress, desc=f"cate {name} (sequential)",
                           nuisances=shared["sequential"])
        rows.append(pd.DataFrame({"set": name, "unit_id": unit_ids, "cluster_id": clusters, "fold": folds,
                                  "tau_hat": kf.tau_hat, "lower": kf.lower, "upper": kf.upper,
                                  "priority_seq": sq.tau_hat}))
        if kf.importance is not None:
            importance[name] = importance_by_scale(kf.importance, sets[name]["columns"])
        if kf.corrections is not None:
            corrections[name] = {"kfold": {str(k): v for k, v in kf.corrections.items()},
                                 "sequential": {str(k): v for k, v in (sq.corrections or {}).items()}}
        if is_ref:
            ref, ref_seq = kf, sq
    seq_mask = ~np.isnan(ref_seq.tau_hat)
    seq_scores = np.full(len(Y), np.nan)
    seq_scores[seq_mask] = dr_scores(Y[seq_mask], W[seq_mask], ref_seq.tau_hat[seq_mask],
                                     ref_seq.m_hat[seq_mask], ref_seq.e_hat[seq_mask])
    dr = pd.DataFrame({"unit_id": unit_ids, "cluster_id": clusters, "fold": folds, "W": W, "Y": Y,
                       "dr_score": dr_scores(Y, W, ref.tau_hat, ref.m_hat, ref.e_hat), "m_hat": ref.m_hat,
                       "e_hat": ref.e_hat, "tau_ref": ref.tau_hat, "dr_score_seq": seq_scores})
    table = pd.concat(rows, ignore_index=True)
    write_with(paths.dr, lambda tmp: dr.to_parquet(tmp, index=False))
    write_json(paths.sets, {k: v["scales"] for k, v in sets.items()})
    write_json(paths.importance, importance)
    write_json(paths.corrections, {"linear_correction": cfg.linear_correction, "chosen": corrections})
    write_with(paths.table, lambda tmp: table.to_parquet(tmp, index=False))
    return table


def run(cfg: Config, out: str | os.PathLike, progress: bool = True) -> pd.DataFrame:
    """The cate stage: units and features of ``out`` into ``out/cate``."""
    layout = StudyLayout(out)
    return run_cate(layout.units, layout.features.root, cfg.cate, cfg.seed, layout.cate.root, progress)
