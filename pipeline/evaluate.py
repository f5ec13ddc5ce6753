"""Evaluation of cross-fitted CATEs: RATE and RATE Ratio per scale set, paired comparisons, ATE.

Procedure (documented in the README):

* **Pooled cross-fitted RATE** (headline): every unit's priority is its out-of-fold ``tau_hat`` (from a
  forest that never saw its cluster's outcomes); the DR scores are the out-of-fold AIPW scores of
  :func:`pipeline.cate.run_cate`. RATE is computed on the whole sample with the half-sample bootstrap over
  clusters; all scale sets use the same DR scores and the same bootstrap draws (same seed), so their RATEs
  are comparable and pairable.
* **Cross-fold test** (robustness): RATE is computed separately within each fold (priorities and scores of
  a fold come from models fitted on the other folds), each fold's ratio t_k is formed, and the folds are
  combined as t = sum_k t_k / sqrt(K) (in the spirit of grf's cross-fold RATE vignette).
* **Paired comparison**: the reference set (default ``all``) against the best single scale (highest AUTOC
  RATE Ratio among single-scale sets), as two-column priorities in one :func:`pipeline.rate.rate` call.
  Choosing the best single scale on the same data favours it, so the paired test is conservative for the
  multi-scale set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .artifacts import require, write_json, write_with
from .rate import rate


def cluster_mean_se(values: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Mean of ``values`` and its cluster-robust standard error (CR0 with small-sample factor G/(G-1))."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    sums = pd.Series(v - mean).groupby(np.asarray(clusters)).sum().to_numpy()
    g = len(sums)
    se = float(np.sqrt(g / (g - 1) * np.sum(sums ** 2)) / len(v))
    return mean, se


def difference_in_means(Y: np.ndarray, W: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Difference in means with a cluster-robust SE (regression of Y on W, CR1)."""
    Y = np.asarray(Y, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    X = np.column_stack([np.ones_like(W), W])
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    scores = pd.DataFrame(X * resid[:, None]).groupby(np.asarray(clusters)).sum().to_numpy()
    g, n, k = len(scores), len(Y), X.shape[1]
    meat = scores.T @ scores * (g / (g - 1)) * ((n - 1) / (n - k))
    V = bread @ meat @ bread
    return float(beta[1]), float(np.sqrt(V[1, 1]))


def _summary(res) -> dict:
    lo, hi = res.interval()
    return {"estimate": res.estimate, "std_err": res.std_err, "ratio": res.ratio, "ci_low": lo, "ci_high": hi,
            "p_value": res.p_value()}


def evaluate_study(cate_dir: str | os.PathLike, cfg, seed: int, out_dir: str | os.PathLike,
                   truth_path: str | os.PathLike | None = None) -> dict:
    """Compute ``metrics.json``, ``rate_table.csv``, ``toc.csv`` and ``toc.png`` from the cate stage outputs.

    Args:
        cate_dir: folder with ``cate.parquet``, ``dr.parquet`` and ``sets.json``.
        cfg: an ``EvaluateConfig``.
        seed: bootstrap seed (shared by all sets so that their draws are identical).
        out_dir: output folder.
        truth_path: optional parquet of the true CATE (simulations only).
    """
    from .report import plot_toc

    cate_dir, out = Path(cate_dir), Path(out_dir)
    table = pd.read_parquet(require(cate_dir / "cate.parquet", "the cate stage's cate.parquet"))
    dr = pd.read_parquet(cate_dir / "dr.parquet")
    sets = json.loads((cate_dir / "sets.json").read_text())
    scores = dr["dr_score"].to_numpy()
    clusters = dr["cluster_id"].to_numpy()
    folds = dr["fold"].to_numpy()
    q = np.linspace(1.0 / cfg.q_grid, 1.0, cfg.q_grid)
    truth = None
    if truth_path is not None and Path(truth_path).exists():
        truth = pd.read_parquet(truth_path).set_index("unit_id").reindex(dr["unit_id"])["tau"].to_numpy()

    tau_by_set = {name: g.set_index("unit_id").reindex(dr["unit_id"]) for name, g in table.groupby("set", sort=False)}
    metrics: dict = {"n_units": int(len(dr)), "n_clusters": int(pd.Series(clusters).nunique()),
                     "n_boot": cfg.n_boot, "sets": {}}
    rows, toc_rows = [], []
    for name in sets:
        g = tau_by_set[name]
        tau = g["tau_hat"].to_numpy()
        entry = {"scales": sets[name]}
        for target in cfg.targets:
            res = rate(scores, tau, target=target, clusters=clusters, q=q, n_boot=cfg.n_boot, seed=seed)
            fold_t = []
            for f in np.unique(folds):
                m = folds == f
                if pd.Series(clusters[m]).nunique() >= 4:
                    rf = rate(scores[m], tau[m], target=target, clusters=clusters[m], q=q, n_boot=cfg.n_boot,
                              seed=seed + 1 + int(f))
                    fold_t.append(rf.ratio)
            crossfold_t = float(np.sum(fold_t) / np.sqrt(len(fold_t))) if fold_t else float("nan")
            entry[target] = {**_summary(res), "crossfold_t": crossfold_t,
                             "crossfold_p": float(2 * stats.norm.sf(abs(crossfold_t)))}
            rows.append({"set": name, "target": target, **entry[target]})
            if target == cfg.targets[0]:
                toc_rows.append(res.toc.assign(set=name).drop(columns="priority"))
        if truth is not None:
            entry["corr_true_tau"] = float(np.corrcoef(tau, truth)[0, 1])
            entry["spearman_true_tau"] = float(stats.spearmanr(tau, truth).statistic)
            entry["interval_coverage"] = float(np.mean((g["lower"].to_numpy() <= truth) & (truth <= g["upper"].to_numpy())))
            entry["rmse"] = float(np.sqrt(np.mean((tau - truth) ** 2)))
        metrics["sets"][name] = entry

    singles = [s for s, sc in sets.items() if len(sc) == 1]
    first = cfg.targets[0]
    if singles and cfg.reference_set in sets and cfg.reference_set not in singles:
        best = max(singles, key=lambda s: metrics["sets"][s][first]["ratio"])
        prio = np.column_stack([tau_by_set[cfg.reference_set]["tau_hat"].to_numpy(),
                                tau_by_set[best]["tau_hat"].to_numpy()])
        metrics["paired"] = {"reference": cfg.reference_set, "best_single": best}
        for target in cfg.targets:
            res = rate(scores, prio, target=target, clusters=clusters, q=q, n_boot=cfg.n_boot, seed=seed,
                       names=[cfg.reference_set, best])
            metrics["paired"][target] = _summary(res)

    ate, ate_se = cluster_mean_se(scores, clusters)
    dim, dim_se = difference_in_means(dr["Y"].to_numpy(), dr["W"].to_numpy(), clusters)
    metrics["ate"] = {"aipw": ate, "aipw_se": ate_se, "aipw_ci": [ate - 1.96 * ate_se, ate + 1.96 * ate_se],
                      "difference_in_means": dim, "difference_in_means_se": dim_se}
    if truth is not None:
        metrics["ate"]["true"] = float(truth.mean())

    rate_table = pd.DataFrame(rows)
    toc = pd.concat(toc_rows, ignore_index=True)[["set", "q", "estimate", "std_err"]]
    write_with(out / "rate_table.csv", lambda tmp: rate_table.to_csv(tmp, index=False, float_format="%.6g"))
    write_with(out / "toc.csv", lambda tmp: toc.to_csv(tmp, index=False, float_format="%.6g"))
    write_with(out / "toc.png", lambda tmp: plot_toc(toc, tmp, title=f"TOC by scale set ({cfg.targets[0]} order)"))
    write_json(out / "metrics.json", metrics)
    return metrics
