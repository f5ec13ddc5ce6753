"""Inference on cross-fitted CATEs beyond a single RATE: sequential (cross-fold) RATE, the BLP calibration
test, held-out choice of a scale set, the AIPW ATE's cluster-robust SE and the difference in means.

Torch- and forest-free: every function takes DR scores, priorities, outcomes and cluster labels as arrays.
The evaluation procedure that combines them is :mod:`pipeline.procedures.evaluate`.
"""


from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..core.config import EvaluateConfig
from .rate import combine_fold_rates, rate


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


def sequential_rate(scores, priorities, clusters, folds, *, target="AUTOC", q=None, n_boot=EvaluateConfig.n_boot,
                    seed=0,
                    names=None):
    """RATE from sequential cross-fitting: one :func:`rate` per evaluation fold, then
    :func:`combine_fold_rates`.

    Args:
        scores: DR scores of each unit from models fitted on earlier folds (NaN where not evaluated).
        priorities: (n,) or (n, 2) priorities from the same sequential fits (NaN where not evaluated).
        clusters: cluster labels (the bootstrap resamples clusters within each fold).
        folds: fold of each unit; every fold with finite scores is an evaluation fold.
        seed: fold k uses seed + k, so rules compared in a paired call share their draws.
    """
    scores = np.asarray(scores, dtype=np.float64)
    priorities = np.asarray(priorities, dtype=np.float64)
    clusters, folds = np.asarray(clusters), np.asarray(folds)
    results = []
    for f in np.unique(folds[np.isfinite(scores)]):
        m = (folds == f) & np.isfinite(scores)
        results.append(rate(scores[m], priorities[m], target=target, clusters=clusters[m], q=q, n_boot=n_boot,
                            seed=seed + int(f), names=names))
    return combine_fold_rates(results)


def calibration_test(Y, W, propensity, m_hat, tau_hat, clusters) -> dict:
    r"""Best-linear-predictor calibration test of CATE estimates (as grf's ``test_calibration``).

    Regress :math:`Y - \hat m(X)` on :math:`(W - e)\,\bar\tau` and :math:`(W - e)(\hat\tau - \bar\tau)`
    without intercept. The first coefficient is 1 when the average prediction is correct; the second
    ("differential") is 1 when the heterogeneity is well estimated, and a one-sided test of it being > 0
    tests for heterogeneity the estimates capture. Standard errors are cluster-robust (CR1).
    All inputs must be out-of-fold.
    """
    Y, W = np.asarray(Y, float), np.asarray(W, float)
    e = np.broadcast_to(np.asarray(propensity, float), Y.shape)
    tau = np.asarray(tau_hat, float)
    mean_tau = tau.mean()
    X = np.column_stack([(W - e) * mean_tau, (W - e) * (tau - mean_tau)])
    y = Y - np.asarray(m_hat, float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    bread = np.linalg.pinv(X.T @ X)
    scores = pd.DataFrame(X * resid[:, None]).groupby(np.asarray(clusters)).sum().to_numpy()
    g, n, k = len(scores), len(y), X.shape[1]
    V = bread @ (scores.T @ scores * (g / (g - 1)) * ((n - 1) / (n - k))) @ bread
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    t = beta / np.where(se > 0, se, np.nan)
    return {"mean_prediction": float(beta[0]), "mean_prediction_se": float(se[0]),
            "differential_prediction": float(beta[1]), "differential_prediction_se": float(se[1]),
            "differential_p_one_sided": float(stats.norm.sf(t[1])) if np.isfinite(t[1]) else float("nan")}


def held_out_selection(fold_results: dict, target: str) -> dict:
    """Choose a scale set on all evaluation folds but the last, and test the choice on the last one.

    Ranking many scale sets by RATE Ratio and reporting the winner's ratio on the same data inflates it (a
    winner's curse). Here the set with the highest ratio on the earlier evaluation folds is chosen, and its
    RATE on the last (held-out) evaluation fold is an honest test of the chosen set.
    """
    per_set = fold_results.get(target, {})
    n_folds = min((len(r.fold_estimates) for r in per_set.values()), default=0)
    if n_folds < 2:
        return {"note": "needs at least 2 evaluation folds"}

    def ratio(r, idx):
        est = np.mean([r.fold_estimates[i] for i in idx])
        se = np.sqrt(np.sum([r.fold_std_errs[i] ** 2 for i in idx])) / len(idx)
        return est, se, est / se if se > 0 else float("nan")

    select = list(range(n_folds - 1))
    scored = {name: ratio(r, select)[2] for name, r in per_set.items()}
    chosen = max(scored, key=lambda k: scored[k])
    est, se, rr = ratio(per_set[chosen], [n_folds - 1])
    return {"target": target, "chosen": chosen, "ratio_on_selection_folds": scored,
            "held_out": {"estimate": float(est), "std_err": float(se), "ratio": float(rr),
                         "p_value": float(2 * stats.norm.sf(abs(rr))) if np.isfinite(rr) else float("nan")},
            "note": "the headline table ranks every set on the same folds: the best of many is inflated; "
                    "held_out tests the set chosen on earlier folds on the last evaluation fold"}
