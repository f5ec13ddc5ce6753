"""Procedure ``cate``: cross-fitted causal forests per scale set, out-of-fold CATEs and DR scores."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from ..core.artifacts import read_npy, require, write_json, write_with
from ..core.compute import dask_client, n_threads, run_ordered
from ..core.config import Config
from ..core.errors import ConfigError, EstimationError, warn_all
from ..core.layout import CatePaths, FeaturePaths, StudyLayout
from ..core.units import read_units
from ..estimate.cate import (
    assemble_folds,
    check_design,
    check_features,
    check_learner,
    check_trial_design,
    dr_scores,
    fit_fold,
    fold_nuisances,
    importance_by_scale,
    make_folds,
    one_blas_thread,
    training_splits,
)


def run_cate(units_path, features_dir, cfg, seed: int, out_dir, progress: bool = True, client=None,
             learner=None) -> pd.DataFrame:
    """Cross-fit causal forests on every scale set's features and write the cate stage's outputs.

    Two cross-fitting schemes run on the same cluster-grouped folds (shared by all sets):

    * ``kfold`` gives every unit a CATE (``tau_hat``, 95 % interval) from a forest fitted on the other
      folds: for maps, correlations with a known truth and the AIPW ATE;
    * ``sequential`` predicts fold k from folds 0..k-1 only (``priority_seq``, NaN in fold 0): the
      priorities and DR scores (``dr_score_seq``) of the calibrated RATE test (see :mod:`pipeline.procedures.evaluate`).

    Writes (:class:`pipeline.core.layout.CatePaths`) the CATE table (set, unit, cluster, fold, tau_hat,
    lower, upper, priority_seq; GeoParquet with each unit's point), the DR table (per unit: W, Y, K-fold DR
    score, m_hat, propensity, and the
    sequential DR score, all from the ``cfg.dr_reference`` set), the scales of every set, the importance by
    scale and the linear corrections chosen.

    The sequential scheme's last split (folds 0..K-2 predict fold K-1) is the K-fold scheme's split of fold
    K-1, so that fit (and its nuisances) is done once and serves both: in fold K-1, ``priority_seq`` equals
    ``tau_hat``.

    Every (scale set, scheme, fold) fit is one task (:func:`pipeline.estimate.cate.fit_fold`), after the
    shared nuisances' tasks (:func:`pipeline.estimate.cate.fold_nuisances`); with a Dask ``client`` they run
    on its workers (one thread each) and are gathered in a fixed order, so the outputs are bitwise identical
    to the synchronous run. ``learner``: a user's econml-shaped CATE learner instead of the causal forest
    (:func:`pipeline.estimate.cate.fit_fold`).
    """
    if learner is not None:
        check_learner(learner)
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
    schemes = {"kfold": (training_splits(folds, "kfold"), seed),
               "sequential": (training_splits(folds, "sequential"), seed + 500)}
    for splits, _ in schemes.values():
        check_design(Y, W, clusters, splits)
    matrices = {name: check_features(read_npy(features.matrix(name))) for name in sets}
    # one thread per task: on a cluster's workers, and without one, tasks run side by side on n_jobs threads
    # (fuller use of the cores than threads inside each fit; every task's result is the same on one thread)
    task_threads = 1 if client is not None or learner is not None else n_threads(cfg.n_jobs)
    task_cfg = dataclasses.replace(cfg, n_jobs=1) if client is not None or task_threads > 1 else cfg
    shared = {sch: None for sch in schemes}
    # the sequential scheme's last split (train on folds 0..K-2) is the K-fold scheme's split of fold K-1: its
    # nuisances and forests are fitted once and used by both schemes
    last = int(np.max(folds))

    def reused(sch: str, f: int) -> bool:
        return sch == "sequential" and f == last

    # BLAS on one thread for the whole run when fits share the process: each fit's linear index limits BLAS
    # to one thread while it runs, and without this outer limit the first fit to finish would restore the
    # process-wide BLAS threads under the others (last-bit changes, not reproducible)
    with one_blas_thread() if task_threads > 1 else contextlib.nullcontext():
        if cfg.shared_nuisance:  # nuisances fitted once per split on the reference set's features, reused by all
            Xn = matrices[cfg.dr_reference]
            items = [(Xn, Y, W, clusters, f, tr, te, task_cfg, off) for sch, (splits, off) in schemes.items()
                     for f, tr, te in splits if not reused(sch, f)]
            done = iter(run_ordered(client, fold_nuisances, items, progress="cate nuisances" if progress else None,
                                    threads=task_threads, cost=[int(it[5].sum()) for it in items]))
            shared = {sch: {f: next(done) for f, _, _ in splits if not reused(sch, f)}
                      for sch, (splits, _) in schemes.items()}
            shared["sequential"][last] = shared["kfold"][last]
        items = [(matrices[name], Y, W, clusters, f, tr, te, task_cfg, off, name == cfg.dr_reference,
                  None if shared[sch] is None else shared[sch][f], learner)
                 for name in sets for sch, (splits, off) in schemes.items() for f, tr, te in splits
                 if not reused(sch, f)]
        # cost: training rows x features (the ridge index and the forest's candidates grow with p)
        done = iter(run_ordered(client, fit_fold, items, progress="cate forests" if progress else None,
                                threads=task_threads, cost=[int(it[5].sum()) * it[0].shape[1] for it in items]))
    rows, importance, corrections, results, found = [], {}, {}, {}, []
    for name in sets:
        is_ref = name == cfg.dr_reference
        fitted: dict[tuple[str, int], object] = {}
        for sch, (splits, _) in schemes.items():
            fits = []
            for f, _, _ in splits:
                fitted[sch, f] = fitted["kfold", f] if reused(sch, f) else next(done)
                fits.append(fitted[sch, f])
            results[sch] = assemble_folds(folds, [te for _, _, te in splits], fits, is_ref)
        kf, sq = results["kfold"], results["sequential"]
        flat = constant_folds(name, folds, {sch: results[sch].tau_hat for sch in schemes}, cfg, learner)
        if flat:
            found.append(flat)
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
    # GeoParquet with each unit's point (longitude/latitude): the CATEs open in QGIS or geopandas as a layer
    geometry = units.geometry.to_crs(4326).to_numpy()
    table = gpd.GeoDataFrame(table, geometry=np.tile(geometry, len(rows)), crs=4326)
    write_json(paths.warnings, warn_all(found))
    write_with(paths.dr, lambda tmp: dr.to_parquet(tmp, index=False))
    write_json(paths.sets, {k: v["scales"] for k, v in sets.items()})
    write_json(paths.importance, importance)
    write_json(paths.corrections, {"linear_correction": cfg.linear_correction, "chosen": corrections})
    write_with(paths.table, lambda tmp: table.to_parquet(tmp, index=False))
    return table


def constant_folds(name: str, folds: np.ndarray, tau_by_scheme: dict, cfg, learner=None) -> str:
    """A warning when a scale set's CATEs are constant within predicted folds (the forests never split, as
    in a small trial: each honest tree fits on a subsample of a half-sample of the training rows); ""
    otherwise."""
    parts, sizes = [], []
    for scheme, tau in tau_by_scheme.items():
        predicted = [f for f in np.unique(folds) if np.isfinite(tau[folds == f]).all()]
        flat = [f for f in predicted if np.ptp(tau[folds == f]) == 0]
        if flat:
            parts.append(f"{len(flat)} of {len(predicted)} {scheme} folds")
            sizes += [int(((folds != f) if scheme == "kfold" else (folds < f)).sum()) for f in flat]
    if not parts:
        return ""
    # a tree splits a node of at least 10 splitting rows (and 2 leaves' worth on each half): its subsample of
    # max_samples x n rows, halved, must hold that many
    need = int(np.ceil(2 * max(10, 2 * cfg.min_samples_leaf) / cfg.max_samples))
    fix = ("check the learner" if learner is not None else
           f"the forests had {min(sizes)}-{max(sizes)} training rows there, too few to split (a tree needs about "
           f"{need} with cate.min_samples_leaf {cfg.min_samples_leaf} and cate.max_samples {cfg.max_samples:g}); "
           f"collect more units, or lower cate.min_samples_leaf")
    return (f"scale set {name}: the CATEs are constant within {' and '.join(parts)}, so its RATE is 0 by "
            f"construction: {fix}")


def run(cfg: Config, out: str | os.PathLike, progress: bool = True, learner=None) -> pd.DataFrame:
    """The cate stage: units and features of ``out`` into ``out/cate``, on the ``compute`` backend (with
    ``learner``, a user's CATE learner instead of the causal forest)."""
    layout = StudyLayout(out)
    with dask_client(cfg.compute) as client:
        return run_cate(layout.units, layout.features.root, cfg.cate, cfg.seed, layout.cate.root, progress, client,
                        learner)
