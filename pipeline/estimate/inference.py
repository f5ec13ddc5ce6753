"""Inference on cross-fitted CATEs beyond a single RATE: sequential (cross-fold) RATE, the BLP calibration
test, the best linear projection on covariates, sorted group effects (GATES), held-out choice of a scale set,
the AIPW ATE's cluster-robust SE and the difference in means.

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
    if g < 2:  # one cluster: no between-cluster variation to estimate a standard error from
        return mean, float("nan")
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


def best_linear_projection(scores, X, clusters, names=None) -> dict:
    """The best linear projection of the CATE on covariates (grf's ``best_linear_projection``): OLS of the DR
    scores on an intercept and the covariates, with cluster-robust (CR1) standard errors.

    With cross-fitted DR scores Gamma_i (never fitted on unit i's cluster), the coefficients estimate the best
    linear approximation of the CATE in the covariates; the intercept is the ATE when the covariates are
    centred (they are centred here). Each coefficient gets a two-sided normal p-value.

    Args:
        scores: (n,) DR scores.
        X: (n, p) covariates (centred here).
        clusters: (n,) cluster labels.
        names: the covariates' names (default x0, x1, ...).

    Returns:
        ``{"terms": [{"term", "estimate", "std_err", "p_value"}, ...]}``, intercept first.
    """
    y = np.asarray(scores, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    names = list(names) if names is not None else [f"x{j}" for j in range(X.shape[1])]
    D = np.column_stack([np.ones(len(y)), X - X.mean(axis=0)])
    beta, se = _ols_cr1(y, D, clusters)
    p = 2 * stats.norm.sf(np.abs(beta / np.where(se > 0, se, np.nan)))
    return {"terms": [{"term": t, "estimate": float(b), "std_err": float(e), "p_value": float(q)}
                      for t, b, e, q in zip(["(intercept)", *names], beta, se, p)]}


def sorted_group_effects(scores, priorities, clusters, folds, n_groups: int = 4) -> dict:
    """GATES (sorted group average treatment effects) from sequential cross-fitting: within each evaluation
    fold, units are cut into ``n_groups`` groups by their priority (quantiles; group 1 lowest), and each
    group's effect is the mean DR score of its units with a cluster-robust SE; the folds' estimates are
    averaged, with SE sqrt(sum SE_k^2) / K as the RATE's (the folds' priorities come from earlier folds only).
    A fold where a group holds fewer than two clusters (a small trial) does not count for that group; a group
    that no fold can estimate is NaN.

    Returns:
        ``{"groups": [{"group", "estimate", "std_err", "ci_low", "ci_high", "n"}, ...], "n_folds": K}``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    priorities = np.asarray(priorities, dtype=np.float64)
    clusters, folds = np.asarray(clusters), np.asarray(folds)
    ok = np.isfinite(scores) & np.isfinite(priorities)
    fold_ids = np.unique(folds[ok])
    est = np.zeros((len(fold_ids), n_groups))
    var = np.zeros_like(est)
    count = np.zeros(n_groups, dtype=np.int64)
    for i, f in enumerate(fold_ids):
        m = ok & (folds == f)
        rank = stats.rankdata(priorities[m], method="average")
        group = np.minimum((n_groups * (rank - 0.5) / m.sum()).astype(int), n_groups - 1)
        for j in range(n_groups):
            sel = group == j
            mean, se = cluster_mean_se(scores[m][sel], clusters[m][sel]) if sel.any() else (np.nan, np.nan)
            if not np.isfinite(se):
                est[i, j], var[i, j] = np.nan, np.nan
                continue
            est[i, j], var[i, j] = mean, se ** 2
            count[j] += int(sel.sum())
    k = len(fold_ids)
    valid = np.isfinite(est).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(valid > 0, np.nansum(est, axis=0) / np.maximum(valid, 1), np.nan)
        ses = np.where(valid > 0, np.sqrt(np.nansum(var, axis=0)) / np.maximum(valid, 1), np.nan)
    z = stats.norm.ppf(0.975)
    return {"n_folds": int(k), "groups": [
        {"group": j + 1, "estimate": float(means[j]), "std_err": float(ses[j]), "ci_low": float(means[j] - z * ses[j]),
         "ci_high": float(means[j] + z * ses[j]), "n": int(count[j])} for j in range(n_groups)]}


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
    All inputs must be out-of-fold. With pooled K-fold CATEs this test is not calibrated (cross-fold
    dependence, as for the pooled RATE); the evaluate stage uses :func:`sequential_calibration_test`.
    """
    Y, W = np.asarray(Y, float), np.asarray(W, float)
    e = np.broadcast_to(np.asarray(propensity, float), Y.shape)
    tau = np.asarray(tau_hat, float)
    mean_tau = tau.mean()
    X = np.column_stack([(W - e) * mean_tau, (W - e) * (tau - mean_tau)])
    beta, se = _ols_cr1(Y - np.asarray(m_hat, float), X, clusters)
    t = beta / np.where(se > 0, se, np.nan)
    return {"mean_prediction": float(beta[0]), "mean_prediction_se": float(se[0]),
            "differential_prediction": float(beta[1]), "differential_prediction_se": float(se[1]),
            "differential_p_one_sided": float(stats.norm.sf(t[1])) if np.isfinite(t[1]) else float("nan")}


def _ols_cr1(y: np.ndarray, D: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """OLS of ``y`` on the columns of ``D`` (no intercept added) with cluster-robust CR1 standard errors."""
    beta, *_ = np.linalg.lstsq(D, y, rcond=None)
    bread = np.linalg.pinv(D.T @ D)
    sums = pd.DataFrame(D * (y - D @ beta)[:, None]).groupby(np.asarray(clusters)).sum().to_numpy()
    g, n, k = len(sums), len(y), D.shape[1]
    if g < 2 or n <= k:
        return beta, np.full(k, np.nan)
    V = bread @ (sums.T @ sums) @ bread * (g / (g - 1)) * ((n - 1) / (n - k))
    return beta, np.sqrt(np.clip(np.diag(V), 0.0, None))


def _ols_cluster_jackknife(y: np.ndarray, D: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """OLS of ``y`` on ``D`` with the cluster jackknife (CR3) standard errors: sqrt((G-1)/G sum_g (b_-g -
    mean b_-g)^2), b_-g refitted without cluster g (closed form from the per-cluster cross-products). CR3 stays
    close to its nominal size with few clusters of very unequal size, where CR1 is too small (MacKinnon,
    Nielsen & Webb, J. Econometrics 2023)."""
    beta, *_ = np.linalg.lstsq(D, y, rcond=None)
    codes, labels = pd.factorize(np.asarray(clusters))
    g, k = len(labels), D.shape[1]
    if g < 2:
        return beta, np.full(k, np.nan)
    xx = np.zeros((g, k, k))
    np.add.at(xx, codes, D[:, :, None] * D[:, None, :])
    xy = np.zeros((g, k))
    np.add.at(xy, codes, D * y[:, None])
    try:
        loo = np.linalg.solve(D.T @ D - xx, (D.T @ y - xy)[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # removing some cluster leaves the design singular
        return beta, np.full(k, np.nan)
    return beta, np.sqrt((g - 1) / g * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))


def sequential_calibration_test(scores, tau_hat, clusters, folds, se: str = "cr3") -> dict:
    r"""Best-linear-predictor calibration test from sequential cross-fitting, calibrated where the pooled
    K-fold test (:func:`calibration_test`) is not.

    Within each evaluation fold k, the sequential DR scores :math:`\Gamma_i` (nuisances fitted on folds before
    k) are regressed, without intercept and with cluster-jackknife (CR3) SEs, on :math:`\bar\tau_k` and
    :math:`\hat\tau_i - \bar\tau_k`, where :math:`\hat\tau` comes from the model fitted on folds before k
    and :math:`\bar\tau_k` is its mean over the fold. Since :math:`E[\Gamma_i \mid X_i] = \tau(X_i)`, the
    coefficients are grf's ``test_calibration`` coefficients in DR-score form: the mean-prediction
    coefficient is 1 when the average CATE is right, the differential one is the slope of the true CATE on
    :math:`\hat\tau` (1 when the CATEs are calibrated, 0 when they carry no heterogeneity). Given the
    earlier folds, each fold's coefficients are unbiased (nothing in fold k was fitted on fold k), so the
    fold estimates are averaged with SE sqrt(sum SE_k^2) / K as the sequential RATE's. A fold whose
    :math:`\hat\tau` is constant, or that some cluster's removal leaves without two distinct CATEs, has no
    slope and does not count. CR3 rather than CR1: with Uganda-like clusters (1-30 units) and a fifth of the
    clusters per fold, CR1 rejected 6.8 % and CR3 6.0 % in 500 null replications (the test's own check).

    Args:
        scores: sequential DR scores (NaN in the first fold, which has no earlier folds).
        tau_hat: sequential CATEs (NaN where not evaluated).
        clusters: cluster labels.
        folds: fold of each unit.
        se: ``cr3`` (cluster jackknife, the default) or ``cr1`` (cluster-robust sandwich) within each fold.

    Returns:
        the two coefficients, their SEs, the one-sided p-value of "differential > 0", and per-fold values.
    """
    if se not in ("cr3", "cr1"):
        raise ValueError(f"se must be 'cr3' or 'cr1', not {se!r}")  # programming error, not user input
    scores = np.asarray(scores, dtype=np.float64)
    tau_hat = np.asarray(tau_hat, dtype=np.float64)
    clusters, folds = np.asarray(clusters), np.asarray(folds)
    ok = np.isfinite(scores) & np.isfinite(tau_hat)
    per_fold = []
    for f in np.unique(folds[ok]):
        m = ok & (folds == f)
        t = tau_hat[m]
        if np.ptp(t) <= 1e-12 * max(1.0, np.abs(t).max()) or len(np.unique(clusters[m])) < 2:
            continue
        mean_t = t.mean()
        ols = _ols_cluster_jackknife if se == "cr3" else _ols_cr1
        beta, err = ols(scores[m], np.column_stack([np.full(len(t), mean_t), t - mean_t]), clusters[m])
        if np.all(np.isfinite(err)):
            per_fold.append({"fold": int(f) if np.issubdtype(type(f), np.integer) else str(f),
                             "mean_prediction": float(beta[0]), "mean_prediction_se": float(err[0]),
                             "differential_prediction": float(beta[1]), "differential_prediction_se": float(err[1]),
                             "n": int(m.sum())})
    out = {"scheme": "sequential", "folds": per_fold}
    if not per_fold:
        nan = float("nan")
        return {**out, "mean_prediction": nan, "mean_prediction_se": nan, "differential_prediction": nan,
                "differential_prediction_se": nan, "differential_p_one_sided": nan}
    k = len(per_fold)
    comb = {}
    for key in ("mean_prediction", "differential_prediction"):
        comb[key] = float(np.mean([r[key] for r in per_fold]))
        comb[key + "_se"] = float(np.sqrt(np.sum([r[key + "_se"] ** 2 for r in per_fold])) / k)
    sd = comb["differential_prediction_se"]
    p = float(stats.norm.sf(comb["differential_prediction"] / sd)) if sd > 0 else float("nan")
    return {**comb, "differential_p_one_sided": p, **out}


def _ratio_on_folds(result, idx) -> tuple[float, float, float]:
    """Mean RATE of a sequential result over the evaluation folds ``idx`` (positions), its SE and ratio."""
    est = float(np.mean([result.fold_estimates[i] for i in idx]))
    se = float(np.sqrt(np.sum([result.fold_std_errs[i] ** 2 for i in idx])) / len(idx))
    return est, se, est / se if se > 0 else float("nan")


def earlier_fold_choices(candidates: dict) -> list:
    """For each evaluation fold j (in fold order), the candidate with the highest RATE Ratio on the
    evaluation folds before j (None for the first evaluation fold, which has none).

    Args:
        candidates: ``{name: RATEResult}`` from :func:`sequential_rate`, all on the same evaluation folds.
    """
    n_folds = min(len(r.fold_estimates) for r in candidates.values())
    choices: list = [None]
    for j in range(1, n_folds):
        scored = {name: _ratio_on_folds(r, range(j))[2] for name, r in candidates.items()}
        finite = {k: v for k, v in scored.items() if np.isfinite(v)}
        choices.append(max(finite, key=finite.get) if finite else None)
    return choices


def paired_against_earlier_choice(scores, reference, candidates: dict, clusters, folds, *, targets, q=None,
                                  n_boot=EvaluateConfig.n_boot, seed=0, candidate_results: dict | None = None,
                                  names=("reference", "comparator")) -> dict:
    """Paired RATE test of ``reference`` priorities against the best candidate, with no choice on the data
    it tests.

    For evaluation fold k the comparator is the candidate with the highest RATE Ratio (first target) on the
    evaluation folds before k (:func:`earlier_fold_choices`); the first evaluation fold only serves the
    choice. Fold k's paired difference then has mean zero given the earlier folds when the two rules are
    equally good, so the fold statistics form a martingale difference sequence as in
    :func:`sequential_rate` (same seeds per fold, so the draws are those of the single-set tests).
    Choosing the comparator on the tested folds instead favours it (and under no heterogeneity rejects too
    often in its favour).

    Args:
        scores: sequential DR scores (NaN where not evaluated). reference: (n,) priorities.
        candidates: ``{name: (n,) priorities}`` to choose the comparator from.
        clusters, folds: cluster and fold of every unit.
        targets: RATE targets to test; the first one chooses the comparator.
        candidate_results: optional ``{name: RATEResult}`` of the candidates for the first target (as
            computed by :func:`sequential_rate` with the same seed), to avoid recomputing them.

    Returns:
        ``{"comparator_by_fold": {fold: name or None}, "folds_tested": [...], target: RATEResult, ...}``, or
        ``{"note": ...}`` when fewer than two evaluation folds exist or no comparator can be chosen.
    """
    scores = np.asarray(scores, dtype=np.float64)
    folds, clusters = np.asarray(folds), np.asarray(clusters)
    eval_folds = np.unique(folds[np.isfinite(scores)])
    if len(eval_folds) < 2:
        return {"note": "needs at least 2 evaluation folds (one to choose the comparator, one to test it)"}
    first = targets[0]
    if candidate_results is None:
        candidate_results = {name: sequential_rate(scores, prio, clusters, folds, target=first, q=q, n_boot=n_boot,
                                                   seed=seed) for name, prio in candidates.items()}
    choices = earlier_fold_choices(candidate_results)
    tested = np.full(len(scores), np.nan)
    comparator = np.full(len(scores), np.nan)
    for f, choice in zip(eval_folds, choices):
        if choice is None:
            continue
        m = folds == f
        tested[m] = scores[m]
        comparator[m] = np.asarray(candidates[choice], dtype=np.float64)[m]
    out: dict = {"comparator_by_fold": {str(int(f)): c for f, c in zip(eval_folds, choices)},
                 "folds_tested": [int(f) for f, c in zip(eval_folds, choices) if c is not None]}
    if not out["folds_tested"]:  # e.g. constant priorities on the earlier folds: no ratio to choose by
        return {"note": "no comparator could be chosen: no single scale has a finite RATE Ratio on earlier folds",
                "comparator_by_fold": out["comparator_by_fold"]}
    prio = np.column_stack([np.asarray(reference, dtype=np.float64), comparator])
    for target in targets:
        out[target] = sequential_rate(tested, prio, clusters, folds, target=target, q=q, n_boot=n_boot, seed=seed,
                                      names=list(names))
    return out


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

    select = list(range(n_folds - 1))
    scored = {name: _ratio_on_folds(r, select)[2] for name, r in per_set.items()}
    chosen = max(scored, key=lambda k: scored[k])
    est, se, rr = _ratio_on_folds(per_set[chosen], [n_folds - 1])
    return {"target": target, "chosen": chosen, "ratio_on_selection_folds": scored,
            "held_out": {"estimate": float(est), "std_err": float(se), "ratio": float(rr),
                         "p_value": float(2 * stats.norm.sf(abs(rr))) if np.isfinite(rr) else float("nan")},
            "note": "the headline table ranks every set on the same folds: the best of many is inflated; "
                    "held_out tests the set chosen on earlier folds on the last evaluation fold"}


def simulated_cluster_trial(rng: np.random.Generator, n_clusters: int, p: int = 5, hetero: float = 0.0,
                            size_p: float = 0.12, max_size: int = 30):
    """A cluster-randomized trial for size and power checks of the tests above: cluster sizes geometric
    (``size_p``) capped at ``max_size`` (very unequal, as Uganda's 1-54 units per location), half the clusters
    treated, Y = x0 + cluster effect (SD 0.5) + noise + tau W with tau = 1 + ``hetero`` x1.

    Returns:
        (X, Y, W, clusters).
    """
    sizes = np.minimum(rng.geometric(size_p, n_clusters), max_size)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    n = len(clusters)
    X = rng.normal(size=(n, p))
    W = np.repeat(rng.permutation(np.arange(n_clusters) % 2), sizes)
    tau = 1.0 + hetero * X[:, 1]
    Y = X[:, 0] + np.repeat(rng.normal(0, 0.5, n_clusters), sizes) + rng.normal(size=n) + tau * W
    return X, Y, W, clusters


def ridge_t_learner(X: np.ndarray, Y: np.ndarray, W: np.ndarray, folds: np.ndarray,
                    scheme: str = "sequential") -> tuple[np.ndarray, np.ndarray]:
    """A cheap cross-fitted CATE learner for size and power checks (hundreds of replications in minutes): per
    training split a ridge T-learner (tau = m1 - m0) and a ridge outcome model m, predicted out of fold.

    Returns:
        (tau_hat, m_hat), NaN where a unit is not predicted (fold 0 of the ``sequential`` scheme).
    """
    from sklearn.linear_model import Ridge

    from .cate import training_splits

    tau = np.full(len(Y), np.nan)
    m = np.full(len(Y), np.nan)
    for _, tr, te in training_splits(folds, scheme):
        m1 = Ridge(1.0).fit(X[tr & (W == 1)], Y[tr & (W == 1)])
        m0 = Ridge(1.0).fit(X[tr & (W == 0)], Y[tr & (W == 0)])
        tau[te] = m1.predict(X[te]) - m0.predict(X[te])
        m[te] = Ridge(1.0).fit(X[tr], Y[tr]).predict(X[te])
    return tau, m
