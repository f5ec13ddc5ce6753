r"""The CATE estimator, cross-fitting, out-of-fold CATEs and doubly-robust scores.

:class:`CausalForestCATE` is the one CATE estimator of the project (econml's ``fit`` / ``effect`` /
``effect_interval`` shape, scikit-learn's parameters): nuisances (outcome forest, propensity), then an honest
causal forest on the residuals, optionally after a ridge R-learner index (``linear_correction``), which
removes the forest's smoothing bias for effects that vary smoothly across many features.

Honesty contract of :func:`crossfit_cate`: units are split into K folds **grouped by cluster** (the unit of
randomization). For fold k, an estimator (whose own inner cross-fitting of the nuisances is also grouped by
cluster) is fitted on the other folds and predicts the CATE of fold k. So every unit's ``tau_hat`` comes
from a model that never saw that unit's outcome (nor any outcome of its cluster).

Doubly-robust (AIPW) scores for a binary treatment, as in grf's ``get_scores``:

.. math::  \Gamma_i = \hat\tau(x_i) + \frac{W_i - e_i}{e_i (1 - e_i)}
           \bigl(Y_i - \hat m(x_i) - (W_i - e_i)\hat\tau(x_i)\bigr)

with out-of-fold :math:`\hat m(x) = E[Y | X = x]` and :math:`\hat\tau`, and either the known assignment
probability :math:`e` of the trial or an out-of-fold propensity model.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from ..core.compute import n_threads, thread_map
from ..core.config import FORESTS, LEARNERS, LINEAR_CORRECTIONS, CateConfig
from ..core.errors import EstimationError

OVERLAP_WARN = 0.05
AUTO_MIN_CLUSTERS = 8  # linear_correction auto: fewer training clusters than this keep the forest alone


def corrects(cfg) -> bool:
    """Whether the final stage may get a linear correction (causal forest learner, correction not ``none``)."""
    return cfg.linear_correction != "none" and cfg.learner == "causal_forest"


class KnownPropensity(ClassifierMixin, BaseEstimator):
    """A 'classifier' that returns the trial's known assignment probability for every unit."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def fit(self, X, y, sample_weight=None):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        n = np.asarray(X).shape[0] if X is not None else 1
        return np.tile([1.0 - self.p, self.p], (n, 1))

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


class ReproducibleForestRegressor(RandomForestRegressor):
    """A random forest that fits in parallel but predicts on one thread.

    scikit-learn sums the trees' predictions from parallel threads in completion order, so the last bits of
    a prediction change from run to run; summing on one thread makes them bitwise reproducible. Prediction
    is cheap next to fitting, so little speed is lost.
    """

    def predict(self, X):
        n_jobs = self.n_jobs
        self.n_jobs = 1
        try:
            return super().predict(X)
        finally:
            self.n_jobs = n_jobs


def cluster_arms(W: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """(cluster labels, arm of each cluster): 1 when most of its units are treated, else 0."""
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    inverse = inverse.reshape(-1)
    share = np.bincount(inverse, weights=np.asarray(W, dtype=np.float64), minlength=len(labels))
    share /= np.bincount(inverse, minlength=len(labels))
    return labels, (share >= 0.5).astype(np.int64)


def make_folds(clusters, k: int, seed: int, treatment=None) -> np.ndarray:
    """Assign each unit a fold 0..k-1 so that all units of a cluster share a fold.

    Clusters are shuffled with ``seed`` and dealt round-robin, so fold sizes in clusters differ by at most
    one. With ``treatment`` the deal is stratified by arm (treated clusters first, then control ones,
    continuing the round): every fold then holds as many treated clusters as any other, give or take one,
    which small trials need (a fold of one arm cannot fit a propensity or an outcome contrast).

    Raises:
        EstimationError: when there are fewer clusters than folds.
    """
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    if len(labels) < k:
        raise EstimationError("cate.folds", f"at most as many folds as clusters ({len(labels)})", str(k),
                              f"set cate.folds to {max(2, len(labels))} or fewer")
    perm = np.random.default_rng(seed).permutation(len(labels))
    if treatment is not None:
        _, arm = cluster_arms(treatment, clusters)
        perm = perm[np.argsort(-arm[perm], kind="stable")]
    fold_of_cluster = np.empty(len(labels), dtype=np.int64)
    fold_of_cluster[perm] = np.arange(len(labels)) % k
    return fold_of_cluster[inverse.reshape(-1)]


def inner_splits(T, groups, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two inner folds of a training set (nuisance cross-fitting): (train rows, test rows) twice, grouped
    by cluster and stratified by arm (:func:`make_folds`), so each half holds both arms whenever the training
    set has two clusters of each.

    Raises:
        EstimationError: when a half would train on a single arm (too few clusters of one arm).
    """
    T = np.asarray(T).reshape(-1)
    half = make_folds(groups, 2, seed, treatment=T)
    splits = [(np.flatnonzero(half != h), np.flatnonzero(half == h)) for h in (0, 1)]
    for train, _ in splits:
        if len(np.unique(T[train])) < 2:
            _, arm = cluster_arms(T, groups)
            raise EstimationError("W", "at least 2 treated and 2 control clusters in every training split (its "
                                  "nuisance models are cross-fitted on two halves)",
                                  f"{int(arm.sum())} treated and {int((1 - arm).sum())} control clusters",
                                  "use fewer cate.folds, or collect more clusters")
    return splits


MIN_EVAL_CLUSTERS = 4  # a half-sample bootstrap of an evaluation fold keeps half of its clusters, at least 2


def design_problem(W: np.ndarray, clusters, k: int, seed: int) -> str | None:
    """Why cross-fitting with ``k`` folds cannot run on this design (None when it can).

    Checked on the folds the cate stage will use: every training split (k-fold and sequential) must train its
    nuisances on two halves that each hold both arms, and every sequential evaluation fold needs
    :data:`MIN_EVAL_CLUSTERS` clusters for its bootstrap.
    """
    W = np.asarray(W).reshape(-1)
    clusters = np.asarray(clusters)
    n_clusters = len(np.unique(clusters))
    if n_clusters < k:
        return f"{n_clusters} clusters for {k} folds"
    folds = make_folds(clusters, k, seed, treatment=W)
    for scheme in ("sequential", "kfold"):
        for f, tr, te in training_splits(folds, scheme):
            if len(np.unique(W[tr])) < 2:
                return f"fold {f} would be predicted from a single arm"
            try:
                inner_splits(W[tr], clusters[tr], 0)
            except EstimationError:
                return f"the {scheme} training folds of fold {f} hold too few clusters of one arm to cross-fit"
            if scheme == "sequential" and len(np.unique(clusters[te])) < MIN_EVAL_CLUSTERS:
                return (f"evaluation fold {f} holds {len(np.unique(clusters[te]))} clusters "
                        f"(its bootstrap needs {MIN_EVAL_CLUSTERS})")
    return None


def check_trial_design(W: np.ndarray, clusters, k: int, seed: int) -> None:
    """Stop early, before any heavy stage, when the trial is too small for ``k`` cross-fitting folds.

    Raises:
        EstimationError: naming ``cate.folds``, what the design has, what it needs, and the largest number of
            folds that works (or the smallest trial that would).
    """
    problem = design_problem(W, clusters, k, seed)
    if problem is None:
        return
    _, arm = cluster_arms(W, clusters)
    have = f"{len(arm)} clusters ({int(arm.sum())} mostly treated, {int((1 - arm).sum())} mostly control)"
    ok = [j for j in range(k - 1, 1, -1) if design_problem(W, clusters, j, seed) is None]
    need = (f"{k} folds need about {max(2 * k, 4)} clusters of each arm and {MIN_EVAL_CLUSTERS * k} in all "
            f"(2 per arm in the first fold, {MIN_EVAL_CLUSTERS} clusters in every evaluation fold)")
    fix = (f"set cate.folds to {ok[0]}" if ok else
           f"collect at least 4 treated and 4 control clusters ({2 * MIN_EVAL_CLUSTERS} in all, with cate.folds: 2)")
    raise EstimationError("cate.folds", need, f"{have}: {problem}", fix)


def check_design(Y: np.ndarray, W: np.ndarray, clusters: np.ndarray, splits) -> None:
    """Checks that cross-fitting can run: binary W, varying Y, treated and control clusters, both arms in
    every training split."""
    if not set(np.unique(W)) <= {0, 1}:
        raise EstimationError("W", "binary treatment 0/1", f"values {np.unique(W)[:5].tolist()}", "recode W")
    if np.ptp(Y) == 0:
        raise EstimationError("Y", "an outcome that varies", "a constant outcome", "check the outcome column")
    by_cluster = pd.Series(W).groupby(np.asarray(clusters))
    n_treated, n_control = int((by_cluster.max() == 1).sum()), int((by_cluster.min() == 0).sum())
    if n_treated < 2 or n_control < 2:
        raise EstimationError("W", "treated units in at least 2 clusters and control units in at least 2",
                              f"{n_treated} clusters with treated and {n_control} with control units",
                              "check the treatment and cluster columns")
    for f, tr, _ in splits:
        if len(np.unique(W[tr])) < 2:
            raise EstimationError("W", f"treated and control units in the training folds of fold {f}",
                                  "a single arm", "use fewer folds or check that treatment varies across clusters")
        inner_splits(W[tr], np.asarray(clusters)[tr], 0)


def propensity_model(propensity):
    """The propensity 'classifier' of ``cate.propensity``: the known assignment probability, the treated
    share (``share``) or an out-of-fold logistic model (``estimate``)."""
    if propensity == "estimate":
        return LogisticRegression(max_iter=1000)
    if propensity == "share":
        return DummyClassifier(strategy="prior")
    return KnownPropensity(float(propensity))


def outcome_model(params, seed: int, p: int) -> ReproducibleForestRegressor:
    """The outcome nuisance m(x) = E[Y | X = x]: a random forest of ``params.nuisance_trees`` trees on ``p``
    features, trying at each split half of them or grf's ``mtry`` (:func:`mtry_features`), whichever is fewer."""
    tries = min(mtry_features(params.mtry, p), max(1, p // 2))
    return ReproducibleForestRegressor(n_estimators=params.nuisance_trees, min_samples_leaf=10, max_features=tries,
                                       n_jobs=params.n_jobs, random_state=seed)


def mtry_features(rule, p: int) -> int:
    """Features tried at each split of the final forest: ``grf`` is grf's default min(ceil(sqrt(p)) + 20, p)
    (Athey, Tibshirani & Wager 2019; econml tries all p), ``all`` is p, a number is capped at p."""
    if rule == "grf":
        return int(min(np.ceil(np.sqrt(p)) + 20, p))
    if rule == "all":
        return int(p)
    return int(min(int(rule), p))


def causal_forest_options(params, p: int, n_estimators: int | None = None) -> dict:
    """The final-stage forest settings shared by every causal forest the project fits (honest, with
    inference, so that every CATE comes with a variance) for ``p`` features; ``n_estimators`` overrides the
    number of trees."""
    return dict(n_estimators=n_estimators or params.n_estimators, min_samples_leaf=params.min_samples_leaf,
                max_samples=params.max_samples, max_features=mtry_features(params.mtry, p), honest=True,
                n_jobs=params.n_jobs)


def oof_nuisances(X: np.ndarray, Y: np.ndarray, W: np.ndarray, groups: np.ndarray, params, seeds) -> tuple:
    """Out-of-fold outcome and propensity predictions on the rows given: two inner folds grouped by cluster
    and stratified by arm (:func:`inner_splits`, seeded by ``seeds[0]``), fold k's models seeded by
    ``seeds[k]``. These residualise the final stage's inputs (R-learner)."""
    m = np.empty(len(Y))
    e = np.empty(len(Y))
    for k, (a, b) in enumerate(inner_splits(W, groups, seeds[0])):
        m[b] = outcome_model(params, seeds[k], X.shape[1]).fit(X[a], Y[a]).predict(X[b])
        e[b] = propensity_model(params.propensity).fit(X[a], W[a]).predict_proba(X[b])[:, 1]
    return m, e


def heldout_nuisances(X_train, Y_train, W_train, X_test, params, seed: int, outcome: bool = True) -> tuple:
    """Outcome (when ``outcome``) and propensity predictions on test rows from models fitted on all training
    rows (for DR scores): ``(m_test or None, e_test)``."""
    m = outcome_model(params, seed, X_train.shape[1]).fit(X_train, Y_train).predict(X_test) if outcome else None
    e = propensity_model(params.propensity).fit(X_train, W_train).predict_proba(X_test)[:, 1]
    return m, e


def fold_nuisances(Xn: np.ndarray, Y: np.ndarray, W: np.ndarray, groups: np.ndarray, f: int, tr: np.ndarray,
                   te: np.ndarray, cfg, seed: int) -> tuple:
    """Outcome and propensity nuisances of one split (fold ``f``, training mask ``tr``, test mask ``te``):
    out-of-fold predictions on the training rows (:func:`oof_nuisances`, seeds ``seed + 100 f + k``) and
    predictions on the test rows from models fitted on all training rows (:func:`heldout_nuisances`, seed
    ``seed + 1000 + f``). Nothing is fitted on the test rows. Returns ``(m_train, e_train, m_test, e_test)``.
    """
    groups = np.asarray(groups)
    idx = np.flatnonzero(tr)
    m_tr, e_tr = oof_nuisances(Xn[idx], Y[idx], W[idx], groups[idx], cfg, [seed + 100 * f + k for k in (0, 1)])
    m_te, e_te = heldout_nuisances(Xn[tr], Y[tr], W[tr], Xn[te], cfg, seed + 1000 + f)
    return m_tr, e_tr, m_te, e_te


def fit_nuisances(Xn: np.ndarray, Y: np.ndarray, W: np.ndarray, clusters: np.ndarray, splits, cfg, seed: int) -> dict:
    """Outcome and propensity nuisances for every split (:func:`fold_nuisances`), fitted once and shared by
    all scale sets. Returns ``{fold: (m_train, e_train, m_test, e_test)}``."""
    return {f: fold_nuisances(Xn, Y, W, clusters, f, tr, te, cfg, seed) for f, tr, te in splits}


@dataclass
class LinearCATE:
    """A linear CATE index ``a + z'b`` (z: standardised features) fitted by a ridge R-learner, with the
    cluster-robust (sandwich) covariance of (a, b)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (1 + p,): intercept a, then b
    cov: np.ndarray  # (1 + p, 1 + p)
    alpha: float

    def design(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(X)), (np.asarray(X, dtype=np.float64) - self.mean) / self.scale])

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point predictions and their variances (from the sandwich covariance): phi_i' cov phi_i as one
        matrix product and a row sum (an einsum over i, j, k ran in C loops, not BLAS: 2.7 s of a 6.4 s fold
        fit at p = 716)."""
        with one_blas_thread():
            phi = self.design(X)
            return phi @ self.coef, np.sum((phi @ self.cov) * phi, axis=1)

    def predict_point(self, X: np.ndarray) -> np.ndarray:
        """Point predictions only."""
        with one_blas_thread():
            return self.design(X) @ self.coef


def _ridge_solve(D: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with the first column (intercept) unpenalised: coefficients and the inverse Gram matrix."""
    G = D.T @ D
    G[np.arange(1, G.shape[0]), np.arange(1, G.shape[0])] += alpha
    inv = np.linalg.pinv(G, hermitian=True)
    return inv @ (D.T @ y), inv


class _RidgePath:
    """Ridge coefficients of ``y ~ D`` (first column unpenalised) for many penalties from one eigendecomposition.

    The unpenalised column d0 is projected out: with Z~ = Z - d0 (d0'Z) / (d0'd0) and y~ likewise, the
    penalised part is the plain ridge b = (Z~'Z~ + alpha I)^-1 Z~'y~ = V diag(1 / (s + alpha)) V'Z~'y~ (Z~'Z~ =
    V diag(s) V'), and the free coefficient a = d0'(y - Z b) / (d0'd0): the same minimiser as solving the full
    penalised system, at O(p^2) per penalty instead of a pseudo-inverse each.
    """

    def __init__(self, D: np.ndarray, y: np.ndarray):
        d0, Z = D[:, 0], D[:, 1:]
        self.dd = float(d0 @ d0)
        if self.dd <= 0:
            self.dd = np.inf  # a zero column: its coefficient is 0
        self.d0Z, self.d0y = d0 @ Z, float(d0 @ y)
        Zt = Z - np.outer(d0, self.d0Z) / self.dd
        yt = y - d0 * (self.d0y / self.dd)
        s, self.V = np.linalg.eigh(Zt.T @ Zt)
        self.s = np.maximum(s, 0.0)
        self.Vty = self.V.T @ (Zt.T @ yt)

    def coef(self, alpha: float) -> np.ndarray:
        return self.coefs(np.array([alpha]))[:, 0]

    def coefs(self, alphas: np.ndarray) -> np.ndarray:
        """Coefficients (1 + p, len(alphas)), one column per penalty, from one matrix product."""
        B = self.V @ (self.Vty[:, None] / (self.s[:, None] + alphas[None, :]))
        a = (self.d0y - self.d0Z @ B) / self.dd
        return np.vstack([a[None, :], B])


def one_blas_thread():
    """A context in which BLAS and LAPACK run on one thread. Their results change in the last bits with the
    number of threads (a product or an eigendecomposition splits its work differently), and a Dask worker runs
    one thread while the synchronous stage runs one per core: the linear index is computed on one thread
    everywhere, so that the cate stage's outputs are bitwise the same on a cluster and without one (about
    0.15 s more per index at p = 716 on 2 cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def fit_linear_cate(X: np.ndarray, w_res: np.ndarray, y_res: np.ndarray, groups: np.ndarray,
                    alphas=None, cv: int = 5, n_jobs: int = 1) -> LinearCATE:
    """Ridge R-learner: minimise sum_i (y_res_i - w_res_i (a + z_i'b))^2 + alpha |b|^2 over (a, b).

    ``y_res`` and ``w_res`` are the outcome and treatment residuals of the causal forest's first stage and
    z the features standardised on these rows. ``alpha`` is chosen by cross-validation **grouped by
    cluster** (leave-one-row-out would pick too little penalty when units of a cluster share features).
    The covariance of (a, b) is the cluster-robust sandwich ``A^-1 (sum_c s_c s_c') A^-1`` with A the
    penalised Gram matrix and s_c the cluster's score sum; it ignores the ridge bias, as the forest's own
    variance does. The cross-validation folds' eigendecompositions run on ``n_jobs`` threads (each on one BLAS
    thread, so the result does not depend on ``n_jobs``).
    """
    with one_blas_thread():
        return _fit_linear_cate(X, w_res, y_res, groups, alphas, cv, n_jobs)


def _fit_linear_cate(X, w_res, y_res, groups, alphas, cv, n_jobs=1) -> LinearCATE:
    from sklearn.model_selection import GroupKFold

    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    D = w_res[:, None] * np.column_stack([np.ones(len(X)), (X - mean) / scale])
    alphas = np.sort(np.logspace(-2, 5, 29) if alphas is None else np.asarray(alphas, dtype=float))
    groups = np.asarray(groups)
    k = min(cv, len(np.unique(groups)))
    loss = np.zeros(len(alphas))
    if k < 2:  # one cluster: nothing to cross-validate on, take the strongest penalty
        loss[:-1] = np.inf
    else:
        folds = list(GroupKFold(n_splits=k).split(D, groups=groups))

        def fold_loss(split):
            a_idx, b_idx = split
            coefs = _RidgePath(D[a_idx], y_res[a_idx]).coefs(alphas)
            return np.sum((y_res[b_idx, None] - D[b_idx] @ coefs) ** 2, axis=0)

        for fold in thread_map(fold_loss, folds, n_threads(n_jobs)):  # summed in fold order whatever the threads
            loss += fold
    alpha = float(alphas[int(np.argmin(loss))])
    coef, inv = _ridge_solve(D, y_res, alpha)
    resid = y_res - D @ coef
    _, inverse = np.unique(groups, return_inverse=True)
    scores = np.zeros((inverse.max() + 1, D.shape[1]))
    np.add.at(scores, inverse, D * resid[:, None])
    cov = inv @ (scores.T @ scores) @ inv
    return LinearCATE(mean=mean, scale=scale, coef=coef, cov=cov, alpha=alpha)


@dataclass
class FinalFit:
    """The final stage fitted on residualised data: a causal forest, optionally after a linear CATE index
    (``correction == 'ridge'``)."""

    forest: object
    linear: LinearCATE | None
    correction: str

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point predictions and variances (forest variance plus, with the index, the index's variance)."""
        point, var = self.forest.predict_and_var(X)
        point, var = point.reshape(-1), var.reshape(-1)
        if self.linear is not None:
            lp, lv = self.linear.predict(X)
            point, var = point + lp, var + lv
        return point, var

    def predict_point(self, X: np.ndarray) -> np.ndarray:
        """Point predictions only (no variance: the forest's bootstrap of little bags is skipped)."""
        point = np.asarray(self.forest.predict(X)).reshape(-1)
        return point + self.linear.predict_point(X) if self.linear is not None else point

    def importance(self, X: np.ndarray) -> np.ndarray:
        """Feature importances: the forest's; with the index, mixed with the index's normalised squared
        standardised coefficients, weighted by each part's share of the variance of the predictions."""
        imp = np.asarray(self.forest.feature_importances_, dtype=float).reshape(-1)
        if self.linear is None:
            return imp
        b2 = self.linear.coef[1:] ** 2
        lin_imp = b2 / b2.sum() if b2.sum() > 0 else np.zeros_like(b2)
        v_lin = float(np.var(self.linear.predict_point(X)))
        v_forest = float(np.var(self.forest.predict(X).reshape(-1)))
        if v_lin + v_forest == 0:
            return imp
        return (v_forest * imp + v_lin * lin_imp) / (v_forest + v_lin)


def choice_trees(n_estimators: int) -> int:
    """Trees of the forests that only choose the linear correction (``auto``): a quarter of the final
    forest's, a multiple of 4, at least 4. The choice compares two R-losses on held-out clusters; it needs
    predictions good enough to rank the two, not the final forest's variance estimates."""
    return max(4, (n_estimators // 4) // 4 * 4)


def fit_final(X: np.ndarray, w_res: np.ndarray, y_res: np.ndarray, groups: np.ndarray, params, seed: int,
              correction: str = "none", n_estimators: int | None = None) -> FinalFit:
    """Fit the final stage on residualised data (R-learner form of ``CausalForestDML``'s last step).

    ``correction``: ``none`` (the causal forest alone), ``ridge`` (a linear CATE index from
    :func:`fit_linear_cate`, then the forest on the heterogeneity it leaves: ``y_res - w_res * index``) or
    ``auto`` (the one of the two with the lower R-loss on held-out clusters: two inner folds of the
    training rows, grouped by cluster, each side fitted with :func:`choice_trees` trees; the outer test fold
    is never used; with fewer than ``AUTO_MIN_CLUSTERS`` training clusters, the forest alone).
    ``n_estimators`` overrides the forest's number of trees.
    """
    if correction == "auto" and len(np.unique(groups)) < AUTO_MIN_CLUSTERS:
        correction = "none"  # too few clusters to compare the two on held-out halves
    if correction == "auto":
        from sklearn.model_selection import GroupKFold

        loss = {"none": 0.0, "ridge": 0.0}
        trees = choice_trees(n_estimators or params.n_estimators)
        for a_idx, b_idx in GroupKFold(n_splits=2).split(X, groups=groups):
            for mode in loss:
                fit = fit_final(X[a_idx], w_res[a_idx], y_res[a_idx], groups[a_idx], params, seed, mode, trees)
                pred = fit.predict_point(X[b_idx])
                loss[mode] += float(np.sum((y_res[b_idx] - w_res[b_idx] * pred) ** 2))
        correction = min(loss, key=loss.get)
    linear = None
    target = y_res
    if correction == "ridge":
        linear = fit_linear_cate(X, w_res, y_res, groups, n_jobs=params.n_jobs)
        target = y_res - w_res * linear.predict_point(X)
    forest = make_forest(params, X.shape[1], seed, n_estimators)
    forest.fit(X, w_res.reshape(-1, 1), target)
    if params.forest == "econml":
        forest.n_jobs = 1  # reproducible predictions (see _single_thread_predictions)
    return FinalFit(forest=forest, linear=linear, correction=correction)


def make_forest(params, p: int, seed: int, n_estimators: int | None = None):
    """The final stage's honest causal forest with inference for ``p`` features: the project's compiled one
    (:class:`pipeline.estimate.forest.CompiledCausalForest`, ``params.forest == 'compiled'``) or econml's
    ``CausalForest`` (``'econml'``, the reference), with the same settings (:func:`causal_forest_options`)."""
    opts = causal_forest_options(params, p, n_estimators)
    if params.forest == "econml":
        from econml.grf import CausalForest

        return CausalForest(**opts, inference=True, fit_intercept=True, random_state=seed)
    from .forest import CompiledCausalForest

    opts.pop("honest")
    return CompiledCausalForest(**opts, random_state=seed)


class CausalForestCATE(BaseEstimator):
    """The project's CATE estimator, with econml's shape: ``fit(Y, T, *, X, groups)``, ``effect(X)``,
    ``effect_interval(X, alpha)``, and scikit-learn's ``get_params`` / ``set_params`` / ``clone``.

    Stages (Chernozhukov et al.'s double ML, Athey, Tibshirani & Wager's generalized random forests):

    1. **Nuisances**: out-of-fold outcome m(x) = E[Y | X] (a random forest) and propensity e(x)
       (``propensity``: the trial's known probability, the treated ``share`` or an ``estimate``), on two
       inner folds grouped by cluster. They may be supplied instead (``fit(..., nuisances=(m, e))``, e.g.
       fitted once and shared by every scale set).
    2. **Final stage** on the residuals: an honest causal forest with inference; with
       ``linear_correction`` ``ridge`` first a ridge R-learner index a + z'b (its sandwich variance is added
       to the forest's), or ``auto`` choosing between the two on held-out clusters (:func:`fit_final`).

    The final forest is the project's compiled one (``forest='compiled'``, :mod:`pipeline.estimate.forest`)
    or econml's ``CausalForest`` (``forest='econml'``). With ``forest='econml'``,
    ``linear_correction='none'`` and no supplied nuisances, both stages are econml's ``CausalForestDML`` with
    the same nuisance models (the same algorithm, fitted by econml): the reference learner.
    ``learner='dr_forest'`` uses econml's ``ForestDRLearner`` (doubly-robust pseudo-outcomes, honest forest)
    instead, without correction or supplied nuisances.

    Predictions are summed on one thread, so fitted estimators are bitwise reproducible for a
    ``random_state`` whatever ``n_jobs``.

    Defaults are those of the ``cate`` params section (:class:`pipeline.core.config.CateConfig`).

    Args:
        learner: ``causal_forest`` or ``dr_forest``.
        n_estimators: trees of the final forest (a multiple of 4).
        min_samples_leaf, max_samples: final forest leaf size and subsample fraction (<= 0.5).
        mtry: features tried per split: ``grf`` (grf's default, see :func:`mtry_features`), ``all`` or a number.
        nuisance_trees: trees of the outcome forest.
        propensity: known assignment probability, ``share`` or ``estimate``.
        linear_correction: ``none``, ``ridge`` or ``auto`` (with ``dr_forest``: ``none`` or ``auto``, which
            then means none).
        forest: the final forest's builder: ``compiled`` (:class:`pipeline.estimate.forest.CompiledCausalForest`)
            or ``econml`` (econml's ``CausalForest``, the reference).
        n_jobs: threads for fitting.
        random_state: seed of every random choice of the fit.
    """

    def __init__(self, learner: str = CateConfig.learner, n_estimators: int = CateConfig.n_estimators,
                 min_samples_leaf: int = CateConfig.min_samples_leaf, mtry: int | str = CateConfig.mtry,
                 max_samples: float = CateConfig.max_samples,
                 nuisance_trees: int = CateConfig.nuisance_trees, propensity: float | str = CateConfig.propensity,
                 linear_correction: str = CateConfig.linear_correction, forest: str = CateConfig.forest,
                 n_jobs: int = CateConfig.n_jobs, random_state: int = 0):
        self.learner = learner
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.mtry = mtry
        self.max_samples = max_samples
        self.nuisance_trees = nuisance_trees
        self.propensity = propensity
        self.linear_correction = linear_correction
        self.forest = forest
        self.n_jobs = n_jobs
        self.random_state = random_state

    @classmethod
    def from_config(cls, cfg, random_state: int) -> "CausalForestCATE":
        """The estimator described by a :class:`pipeline.core.config.CateConfig`."""
        names = cls._get_param_names()
        return cls(**{k: getattr(cfg, k) for k in names if k != "random_state"}, random_state=random_state)

    def _check_params(self) -> None:
        if self.learner not in LEARNERS:
            raise EstimationError("learner", f"one of {', '.join(LEARNERS)}", repr(self.learner), "pick one")
        if self.linear_correction not in LINEAR_CORRECTIONS:
            raise EstimationError("linear_correction", f"one of {', '.join(LINEAR_CORRECTIONS)}",
                                  repr(self.linear_correction), "pick one")
        if self.forest not in FORESTS:
            raise EstimationError("forest", f"one of {', '.join(FORESTS)}", repr(self.forest), "pick one")
        if self.learner == "dr_forest" and self.linear_correction == "ridge":
            raise EstimationError("linear_correction", "'none' or 'auto' with learner dr_forest (the correction is "
                                  "a causal forest final stage)", repr(self.linear_correction), "use causal_forest")

    def fit(self, Y, T, *, X, W=None, groups=None, nuisances: tuple | None = None) -> "CausalForestCATE":
        """Fit on outcomes ``Y``, binary treatment ``T`` and features ``X``.

        Args:
            Y, T, X: outcomes, treatment 0/1 and (n, p) features.
            W: not supported (controls belong in ``X``); must be None.
            groups: cluster of each row (the unit of randomization); inner folds never split a cluster.
                Default: every row its own cluster.
            nuisances: optional out-of-fold ``(m_hat, e_hat)`` on these rows (never fitted on their own
                outcomes), used instead of fitting the nuisance models here.
        """
        self._check_params()
        if W is not None:
            raise EstimationError("W", "None (put controls in X)", "an array", "pass controls as columns of X")
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(-1)
        T = np.asarray(T).reshape(-1)
        groups = np.arange(len(Y)) if groups is None else np.asarray(groups)
        self.n_features_in_ = X.shape[1]
        self.final_ = self.econml_ = None
        if self.learner == "dr_forest" or (nuisances is None and self.linear_correction == "none"
                                           and self.forest == "econml"):
            self.econml_ = self._fit_econml(Y, T, X, groups, nuisances)
            self.correction_ = "none"
            return self
        if nuisances is None:
            nuisances = oof_nuisances(X, Y, T, groups, self, [self.random_state + k for k in (0, 1)])
        m, e = nuisances
        self.final_ = fit_final(X, T - e, Y - m, groups, self, self.random_state, self.linear_correction)
        self.correction_ = self.final_.correction
        return self

    def _fit_econml(self, Y, T, X, groups, nuisances):
        if nuisances is not None:
            raise EstimationError("nuisances", "None with learner dr_forest", "supplied nuisances",
                                  "use learner causal_forest")
        model_y, model_t = outcome_model(self, self.random_state, X.shape[1]), propensity_model(self.propensity)
        # inner folds grouped by cluster and stratified by arm (econml's own split is not, and fails on small trials)
        opts = dict(**causal_forest_options(self, X.shape[1]), cv=inner_splits(T, groups, self.random_state),
                    random_state=self.random_state)
        if self.learner == "dr_forest":
            from econml.dr import ForestDRLearner

            est = ForestDRLearner(model_regression=model_y, model_propensity=model_t, **opts)
        else:
            from econml.dml import CausalForestDML

            est = CausalForestDML(model_y=model_y, model_t=model_t, discrete_treatment=True, inference=True, **opts)
        with _quiet_econml():
            est.fit(Y, T, X=X, groups=groups)
        _single_thread_predictions(est)
        return est

    def _check_fitted(self, X) -> np.ndarray:
        if not hasattr(self, "correction_"):
            raise EstimationError("CausalForestCATE", "a fitted estimator", "an unfitted one", "call fit first")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise EstimationError("X", f"(n, {self.n_features_in_}) features as in fit", f"shape {X.shape}",
                                  "pass the same columns as in fit")
        return X

    def effect(self, X) -> np.ndarray:
        """CATE predictions, (n,)."""
        X = self._check_fitted(X)
        if self.econml_ is not None:
            with _quiet_econml():
                return np.asarray(self.econml_.effect(X)).reshape(-1)
        return self.final_.predict_point(X)

    def effect_inference(self, X, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``effect(X)`` and ``effect_interval(X, alpha)`` from one pass over the forest: ``(point, lower,
        upper)``, each (n,)."""
        X = self._check_fitted(X)
        if self.econml_ is not None:
            return (self.effect(X), *self.effect_interval(X, alpha))
        from scipy.stats import norm

        point, var = self.final_.predict(X)
        half = float(norm.ppf(1 - alpha / 2)) * np.sqrt(np.maximum(var, 0.0))
        return point, point - half, point + half

    def effect_interval(self, X, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided ``1 - alpha`` confidence intervals of the CATE (normal, from the forest's variance plus
        the index's with a linear correction): ``(lower, upper)``, each (n,)."""
        X = self._check_fitted(X)
        if self.econml_ is not None:
            with _quiet_econml():
                lo, hi = self.econml_.effect_interval(X, alpha=alpha)
            return np.asarray(lo).reshape(-1), np.asarray(hi).reshape(-1)
        return self.effect_inference(X, alpha)[1:]

    def feature_importances(self, X=None) -> np.ndarray | None:
        """Importances of the features for the CATE (the final forest's; with a linear index mixed in by
        variance share over the rows ``X``)."""
        if self.econml_ is not None:
            return _importances(self.econml_)
        return self.final_.importance(self._check_fitted(X))


def make_learner(cfg, seed: int) -> CausalForestCATE:
    """The CATE estimator of a ``CateConfig`` (see :class:`CausalForestCATE`), seeded by ``seed``."""
    return CausalForestCATE.from_config(cfg, seed)


@contextlib.contextmanager
def _quiet_econml():
    """Silence econml's warnings that are expected here (scikit-learn FutureWarnings, undetermined
    covariance of tiny leaves, out-of-bag notes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Co-variance matrix is undertermined.*")
        warnings.filterwarnings("ignore", message=".*out-of-bag predictions.*")
        yield


def _single_thread_predictions(est) -> None:
    """Econml sums tree predictions from parallel threads in completion order, which changes the last
    bits between runs; predicting with one thread keeps outputs bitwise reproducible."""
    models = []
    final = getattr(est, "ortho_learner_model_final_", None)
    models += list(getattr(final, "models_cate", None) or [])  # ForestDRLearner: one forest per treatment
    cate = getattr(est, "model_cate", None)
    if cate is not None and not callable(cate):  # CausalForestDML: a (multi-output) forest
        models += list(getattr(cate, "estimators_", [cate]))
    for forest in models:
        if hasattr(forest, "n_jobs"):
            forest.n_jobs = 1


def _importances(est) -> np.ndarray | None:
    imp = getattr(est, "feature_importances_", None)
    if callable(imp):  # ForestDRLearner: importances of the treatment-1 effect model
        imp = imp(T=1)
    return None if imp is None else np.asarray(imp, dtype=float).reshape(-1)


@dataclass
class CrossFitResult:
    """Out-of-fold CATE estimates for every unit."""

    tau_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    fold: np.ndarray
    m_hat: np.ndarray | None  # out-of-fold E[Y|X], when requested
    e_hat: np.ndarray  # propensity used for each unit
    importance: np.ndarray | None = None  # feature importances of the CATE forests, averaged over folds
    corrections: dict | None = None  # fold -> final stage used ('none' / 'ridge'), with cate.linear_correction


def training_splits(folds: np.ndarray, scheme: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(fold, train mask, test mask) for each predicted fold.

    ``kfold``: every fold is predicted by a model fitted on all other folds. ``sequential``: fold k >= 1 is
    predicted by a model fitted on folds 0..k-1 only (fold 0 is never predicted); the RATE statistics of
    successive folds then form a martingale difference sequence, which keeps the combined test calibrated.
    """
    ids = np.unique(folds)
    if scheme == "kfold":
        return [(int(f), folds != f, folds == f) for f in ids]
    if scheme == "sequential":
        return [(int(f), folds < f, folds == f) for f in ids[1:]]
    raise ValueError(f"unknown cross-fitting scheme {scheme!r}")  # programming error


def crossfit_cate(X: np.ndarray, Y: np.ndarray, W: np.ndarray, clusters: np.ndarray, folds: np.ndarray,
                  cfg, seed: int, with_outcome_model: bool = False, scheme: str = "kfold",
                  progress: bool = False, desc: str = "folds", nuisances: dict | None = None) -> CrossFitResult:
    """Fit one :class:`CausalForestCATE` per fold on training folds only; predict the CATE (and its 95 %
    interval) out of fold.

    Args:
        X: (n, p) features. Y: (n,) outcomes. W: (n,) binary treatment. clusters: (n,) cluster labels.
        folds: (n,) fold index from :func:`make_folds`.
        cfg: a :class:`pipeline.core.config.CateConfig`.
        seed: random seed (fold f's estimator uses ``seed + f``).
        with_outcome_model: also predict m(x) = E[Y|X] out of fold (for DR scores).
        scheme: ``kfold`` or ``sequential`` (see :func:`training_splits`); with ``sequential`` the units of
            fold 0 get NaN.
        nuisances: shared nuisances from :func:`fit_nuisances` (same folds and scheme); the estimator then
            fits only its final stage on the residuals. A linear correction computes them here (seed
            ``seed``) when none are given.
    """
    X = check_features(X)
    splits = training_splits(folds, scheme)
    check_design(Y, W, clusters, splits)
    if nuisances is None and corrects(cfg):  # the correction needs the residuals
        nuisances = fit_nuisances(X, Y, W, clusters, splits, cfg, seed)
    it = splits
    if progress:
        from tqdm import tqdm
        it = tqdm(splits, desc=desc, unit="fold")
    fits = [fit_fold(X, Y, W, clusters, f, tr, te, cfg, seed, with_outcome_model,
                     None if nuisances is None else nuisances[f]) for f, tr, te in it]
    return assemble_folds(folds, [te for _, _, te in splits], fits, with_outcome_model)


def check_features(X) -> np.ndarray:
    """The feature matrix as float64.

    Raises:
        EstimationError: naming the columns that hold NaN or inf.
    """
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=0))
        raise EstimationError("features", "finite feature values",
                              f"NaN/inf in {len(bad)} columns (e.g. {bad[:5].tolist()})",
                              "impute covariates before the cate stage")
    return X


@dataclass
class FoldFit:
    """What one fold's estimator predicts for its test rows (one task of the cate stage)."""

    tau_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    e_hat: np.ndarray
    m_hat: np.ndarray | None
    importance: np.ndarray | None
    correction: str | None  # the final stage used, when fitted by this project's final stage


def check_learner(learner) -> None:
    """A user's CATE learner must have econml's shape: ``fit(Y, T, *, X, ...)`` and ``effect(X)``.

    Raises:
        EstimationError: naming what is missing.
    """
    missing = [m for m in ("fit", "effect") if not callable(getattr(learner, m, None))]
    if missing:
        raise EstimationError("learner", "an econml-shaped CATE learner: fit(Y, T, *, X, groups=None) and "
                              "effect(X) (e.g. econml's CausalForestDML or pipeline.CausalForestCATE)",
                              f"{type(learner).__name__} without {', '.join(missing)}", "wrap it to that shape")


def _fit_own_learner(learner, Y, T, X, groups, seed: int):
    """A fresh copy of a user's learner (scikit-learn ``clone``; ``random_state`` set to ``seed`` when it has
    one), fitted with ``groups`` when its ``fit`` takes them."""
    import inspect

    from sklearn.base import clone

    est = clone(learner)
    if "random_state" in est.get_params(deep=False):
        est.set_params(random_state=seed)
    kw = {"groups": groups} if "groups" in inspect.signature(est.fit).parameters else {}
    with _quiet_econml():
        est.fit(Y, T, X=X, **kw)
    return est


def _own_learner_predictions(est, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CATEs of a user's learner and its 95 % intervals (NaN when it has no ``effect_interval`` or was fitted
    without inference)."""
    with _quiet_econml():
        tau = np.asarray(est.effect(X), dtype=np.float64).reshape(-1)
        try:
            lo, hi = est.effect_interval(X, alpha=0.05)
            lo, hi = np.asarray(lo, dtype=np.float64).reshape(-1), np.asarray(hi, dtype=np.float64).reshape(-1)
        except Exception:  # noqa: BLE001 (no inference: econml raises several types)
            lo = hi = np.full(len(tau), np.nan)
    return tau, lo, hi


def fit_fold(X: np.ndarray, Y: np.ndarray, W: np.ndarray, clusters: np.ndarray, f: int, tr: np.ndarray,
             te: np.ndarray, cfg, seed: int, with_outcome_model: bool = False, nuisance: tuple | None = None,
             learner=None) -> FoldFit:
    """Fit fold ``f``'s estimator (seed ``seed + f``) on the training rows ``tr`` and predict the test rows
    ``te``: the unit of work of :func:`crossfit_cate`, and a task of the cate stage on a Dask cluster.

    ``nuisance``: this split's ``(m_train, e_train, m_test, e_test)`` from :func:`fold_nuisances` (shared by
    every scale set); when None, a linear correction computes them here from ``X`` (seed ``seed``) and
    otherwise the estimator fits its own. ``learner``: a user's econml-shaped CATE learner used instead of
    :class:`CausalForestCATE` (a clone per fold; the DR scores' nuisances are still the project's).
    """
    groups = np.asarray(clusters)
    if learner is not None:
        est = _fit_own_learner(learner, Y[tr], W[tr], X[tr], groups[tr], seed + f)
        tau, lo, hi = _own_learner_predictions(est, X[te])
        if nuisance is not None:
            m_te, e_te = nuisance[2], nuisance[3]
        else:
            m_te, e_te = heldout_nuisances(X[tr], Y[tr], W[tr], X[te], cfg, seed + 1000 + f, with_outcome_model)
        return FoldFit(tau_hat=tau, lower=lo, upper=hi, e_hat=np.broadcast_to(e_te, tau.shape).copy(),
                       m_hat=m_te if with_outcome_model else None, importance=None, correction=None)
    est = CausalForestCATE.from_config(cfg, seed + f)
    if nuisance is None and corrects(cfg):
        nuisance = fold_nuisances(X, Y, W, groups, f, tr, te, cfg, seed)
    if nuisance is not None:
        m_tr, e_tr, m_te, e_te = nuisance
        est.fit(Y[tr], W[tr], X=X[tr], groups=groups[tr], nuisances=(m_tr, e_tr))
    else:
        est.fit(Y[tr], W[tr], X=X[tr], groups=groups[tr])
        m_te, e_te = heldout_nuisances(X[tr], Y[tr], W[tr], X[te], cfg, seed + 1000 + f, with_outcome_model)
    tau, lo, hi = est.effect_inference(X[te], alpha=0.05)
    return FoldFit(tau_hat=tau, lower=lo, upper=hi, e_hat=np.broadcast_to(e_te, lo.shape).copy(),
                   m_hat=m_te if with_outcome_model else None, importance=est.feature_importances(X[te]),
                   correction=est.correction_ if est.final_ is not None else None)


def assemble_folds(folds: np.ndarray, tests: list[np.ndarray], fits: list[FoldFit],
                   with_outcome_model: bool) -> CrossFitResult:
    """Put the folds' predictions (:func:`fit_fold`, in split order) back into unit order; units of no test
    fold (fold 0 of the sequential scheme) get NaN."""
    n = len(folds)
    tau, lo, hi, e_hat = (np.full(n, np.nan) for _ in range(4))
    m_hat = np.full(n, np.nan) if with_outcome_model else None
    importances, corrections = [], {}
    for te, fit in zip(tests, fits):
        f = int(folds[te][0])
        tau[te], lo[te], hi[te], e_hat[te] = fit.tau_hat, fit.lower, fit.upper, fit.e_hat
        if with_outcome_model:
            m_hat[te] = fit.m_hat
        if fit.importance is not None:
            importances.append(fit.importance)
        if fit.correction is not None:
            corrections[f] = fit.correction
    return CrossFitResult(tau_hat=tau, lower=lo, upper=hi, fold=np.asarray(folds).copy(), m_hat=m_hat, e_hat=e_hat,
                          importance=np.mean(importances, axis=0) if importances else None,
                          corrections=corrections or None)


def importance_by_scale(importance: np.ndarray, columns: list[str]) -> dict[str, float]:
    """Sum feature importances per scale (columns ``encoder:scale:feature``) and for the covariates
    (``cov:*``), normalised to sum to one: which scale carries the heterogeneity."""
    out: dict[str, float] = {}
    for imp, col in zip(importance, columns):
        key = "covariates" if col.startswith("cov:") else col.split(":")[1]
        out[key] = out.get(key, 0.0) + float(imp)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()} if total > 0 else out


def dr_scores(Y, W, tau_hat, m_hat, propensity) -> np.ndarray:
    """AIPW scores for a binary treatment (see module docstring).

    Args:
        Y, W: outcomes and binary treatment.
        tau_hat, m_hat: out-of-fold CATE and outcome-model predictions.
        propensity: a scalar known assignment probability or (n,) out-of-fold propensities.

    Warns:
        UserWarning when propensities fall below 0.05 or above 0.95: inverse-propensity weights explode
        when overlap fails (Crump, Hotz, Imbens & Mitnik 2009); consider trimming those units.

    Raises:
        EstimationError: for propensities outside (0, 1) or mismatched lengths.
    """
    Y = np.asarray(Y, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    tau_hat = np.asarray(tau_hat, dtype=np.float64)
    m_hat = np.asarray(m_hat, dtype=np.float64)
    e = np.broadcast_to(np.asarray(propensity, dtype=np.float64), Y.shape)
    for name, arr in (("W", W), ("tau_hat", tau_hat), ("m_hat", m_hat), ("propensity", e)):
        if arr.shape != Y.shape:
            raise EstimationError(name, f"shape {Y.shape} (as Y)", f"shape {arr.shape}", "align the arrays")
    if not set(np.unique(W)) <= {0.0, 1.0}:
        raise EstimationError("W", "binary treatment 0/1", f"values {np.unique(W)[:5].tolist()}", "recode W")
    if np.any((e <= 0) | (e >= 1)):
        raise EstimationError("propensity", "probabilities strictly in (0, 1)",
                              f"{int(((e <= 0) | (e >= 1)).sum())} values at 0 or 1",
                              "trim units without overlap or supply the design probability")
    extreme = (e < OVERLAP_WARN) | (e > 1 - OVERLAP_WARN)
    if extreme.any():
        warnings.warn(f"{int(extreme.sum())} propensities outside [{OVERLAP_WARN}, {1 - OVERLAP_WARN}]: DR scores "
                      "will be highly variable (limited overlap, Crump et al. 2009); consider trimming those units",
                      stacklevel=2)
    resid = Y - m_hat - (W - e) * tau_hat
    return tau_hat + (W - e) / (e * (1 - e)) * resid
