r"""Cross-fitted causal forests, out-of-fold CATEs and doubly-robust scores.

Honesty contract: units are split into K folds **grouped by cluster** (the unit of randomization). For fold
k, a causal forest (econml ``CausalForestDML``, honest, with explicit nuisance models whose own internal
cross-fitting is grouped by cluster) is fitted on the other folds and predicts the CATE of fold k. So every
unit's ``tau_hat`` comes from a model that never saw that unit's outcome (nor any outcome of its cluster).

With ``cate.linear_correction`` (``ridge`` / ``auto``) the final stage is fitted here in its R-learner form on
residuals from :func:`fit_nuisances`: a ridge R-learner index, then the causal forest on the heterogeneity
that the index leaves (:func:`fit_final`), which removes the forest's smoothing bias for effects that vary
smoothly across many features.

Doubly-robust (AIPW) scores for a binary treatment, as in grf's ``get_scores``:

.. math::  \Gamma_i = \hat\tau(x_i) + \frac{W_i - e_i}{e_i (1 - e_i)}
           \bigl(Y_i - \hat m(x_i) - (W_i - e_i)\hat\tau(x_i)\bigr)

with out-of-fold :math:`\hat m(x) = E[Y | X = x]` and :math:`\hat\tau`, and either the known assignment
probability :math:`e` of the trial or an out-of-fold propensity model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from .errors import EstimationError

OVERLAP_WARN = 0.05
AUTO_MIN_CLUSTERS = 8  # linear_correction auto: fewer training clusters than this keep the forest alone


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


def make_folds(clusters, k: int, seed: int) -> np.ndarray:
    """Assign each unit a fold 0..k-1 so that all units of a cluster share a fold.

    Clusters are shuffled with ``seed`` and dealt round-robin, so fold sizes in clusters differ by at most one.

    Raises:
        EstimationError: when there are fewer clusters than folds.
    """
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    if len(labels) < k:
        raise EstimationError("cate.folds", f"at most as many folds as clusters ({len(labels)})", str(k),
                              f"set cate.folds to {max(2, len(labels))} or fewer")
    perm = np.random.default_rng(seed).permutation(len(labels))
    fold_of_cluster = np.empty(len(labels), dtype=np.int64)
    fold_of_cluster[perm] = np.arange(len(labels)) % k
    return fold_of_cluster[inverse.reshape(-1)]


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


def _propensity_model(propensity):
    if propensity == "estimate":
        return LogisticRegression(max_iter=1000)
    if propensity == "share":
        return DummyClassifier(strategy="prior")
    return KnownPropensity(float(propensity))


def make_learner(cfg, seed: int):
    """The CATE learner named by ``cfg.learner``, with explicit nuisance models.

    * ``causal_forest``: econml ``CausalForestDML`` (honest, inference on, nuisance cross-fitting inside);
    * ``dr_forest``: econml ``ForestDRLearner`` (doubly-robust pseudo-outcomes, honest forest final stage).

    Both have econml's ``fit(Y, T, *, X, W=None, groups=None)`` / ``effect(X)`` / ``effect_interval(X)``.
    """
    model_y = ReproducibleForestRegressor(n_estimators=cfg.nuisance_trees, min_samples_leaf=10, max_features=0.5,
                                          n_jobs=cfg.n_jobs, random_state=seed)
    model_t = _propensity_model(cfg.propensity)
    if cfg.learner == "dr_forest":
        from econml.dr import ForestDRLearner

        return ForestDRLearner(model_regression=model_y, model_propensity=model_t, cv=2,
                               n_estimators=cfg.n_estimators, min_samples_leaf=cfg.min_samples_leaf,
                               max_samples=cfg.max_samples, honest=True, n_jobs=cfg.n_jobs, random_state=seed)
    from econml.dml import CausalForestDML

    return CausalForestDML(model_y=model_y, model_t=model_t, discrete_treatment=True, cv=2,
                           n_estimators=cfg.n_estimators, min_samples_leaf=cfg.min_samples_leaf,
                           max_samples=cfg.max_samples, honest=True, inference=True, n_jobs=cfg.n_jobs,
                           random_state=seed)


def _single_thread_predictions(est) -> None:
    """econml sums tree predictions from parallel threads in completion order, which changes the last
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


def fit_nuisances(Xn: np.ndarray, Y: np.ndarray, W: np.ndarray, clusters: np.ndarray, splits, cfg, seed: int) -> dict:
    """Outcome and propensity nuisances for every split, fitted once and shared by all scale sets.

    For split (fold, train, test): out-of-fold predictions on the training rows (2 inner folds grouped by
    cluster; these residualise the final forest's inputs) and predictions on the test rows from models
    fitted on all training rows (for DR scores). Nothing is fitted on the test rows.
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(clusters)
    out = {}
    for f, tr, te in splits:
        idx = np.flatnonzero(tr)
        m_tr = np.empty(len(idx))
        e_tr = np.empty(len(idx))
        for k, (a, b) in enumerate(GroupKFold(n_splits=2).split(idx, groups=groups[idx])):
            my = ReproducibleForestRegressor(n_estimators=cfg.nuisance_trees, min_samples_leaf=10, max_features=0.5,
                                             n_jobs=cfg.n_jobs, random_state=seed + 100 * f + k)
            m_tr[b] = my.fit(Xn[idx[a]], Y[idx[a]]).predict(Xn[idx[b]])
            e_tr[b] = _propensity_model(cfg.propensity).fit(Xn[idx[a]], W[idx[a]]).predict_proba(Xn[idx[b]])[:, 1]
        my = ReproducibleForestRegressor(n_estimators=cfg.nuisance_trees, min_samples_leaf=10, max_features=0.5,
                                         n_jobs=cfg.n_jobs, random_state=seed + 1000 + f)
        m_te = my.fit(Xn[tr], Y[tr]).predict(Xn[te])
        e_te = _propensity_model(cfg.propensity).fit(Xn[tr], W[tr]).predict_proba(Xn[te])[:, 1]
        out[f] = (m_tr, e_tr, m_te, e_te)
    return out


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
        """Point predictions and their variances (from the sandwich covariance)."""
        phi = self.design(X)
        return phi @ self.coef, np.einsum("ij,jk,ik->i", phi, self.cov, phi)


def _ridge_solve(D: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with the first column (intercept) unpenalised: coefficients and the inverse Gram matrix."""
    G = D.T @ D
    G[np.arange(1, G.shape[0]), np.arange(1, G.shape[0])] += alpha
    inv = np.linalg.pinv(G, hermitian=True)
    return inv @ (D.T @ y), inv


def fit_linear_cate(X: np.ndarray, w_res: np.ndarray, y_res: np.ndarray, groups: np.ndarray,
                    alphas=None, cv: int = 5) -> LinearCATE:
    """Ridge R-learner: minimise sum_i (y_res_i - w_res_i (a + z_i'b))^2 + alpha |b|^2 over (a, b).

    ``y_res`` and ``w_res`` are the outcome and treatment residuals of the causal forest's first stage and
    z the features standardised on these rows. ``alpha`` is chosen by cross-validation **grouped by
    cluster** (leave-one-row-out would pick too little penalty when units of a cluster share features).
    The covariance of (a, b) is the cluster-robust sandwich ``A^-1 (sum_c s_c s_c') A^-1`` with A the
    penalised Gram matrix and s_c the cluster's score sum; it ignores the ridge bias, as the forest's own
    variance does.
    """
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
        for a_idx, b_idx in GroupKFold(n_splits=k).split(D, groups=groups):
            for j, alpha in enumerate(alphas):
                coef, _ = _ridge_solve(D[a_idx], y_res[a_idx], alpha)
                loss[j] += np.sum((y_res[b_idx] - D[b_idx] @ coef) ** 2)
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
    """The final stage fitted on one training split: a causal forest on the residuals, optionally after a
    linear CATE index (``correction == 'ridge'``)."""

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

    def importance(self, X: np.ndarray) -> np.ndarray:
        """Feature importances: the forest's; with the index, mixed with the index's normalised squared
        standardised coefficients, weighted by each part's share of the variance of the predictions."""
        imp = np.asarray(self.forest.feature_importances_, dtype=float).reshape(-1)
        if self.linear is None:
            return imp
        b2 = self.linear.coef[1:] ** 2
        lin_imp = b2 / b2.sum() if b2.sum() > 0 else np.zeros_like(b2)
        v_lin = float(np.var(self.linear.predict(X)[0]))
        v_forest = float(np.var(self.forest.predict(X).reshape(-1)))
        if v_lin + v_forest == 0:
            return imp
        return (v_forest * imp + v_lin * lin_imp) / (v_forest + v_lin)


def fit_final(X: np.ndarray, w_res: np.ndarray, y_res: np.ndarray, groups: np.ndarray, cfg, seed: int,
              correction: str = "none") -> FinalFit:
    """Fit the final stage on residualised data (R-learner form of ``CausalForestDML``'s last step).

    ``correction``: ``none`` (the causal forest alone), ``ridge`` (a linear CATE index from
    :func:`fit_linear_cate`, then the forest on the heterogeneity it leaves: ``y_res - w_res * index``) or
    ``auto`` (the one of the two with the lower R-loss on held-out clusters: two inner folds of the
    training rows, grouped by cluster; the outer test fold is never used; with fewer than
    ``AUTO_MIN_CLUSTERS`` training clusters, the forest alone).
    """
    if correction == "auto" and len(np.unique(groups)) < AUTO_MIN_CLUSTERS:
        correction = "none"  # too few clusters to compare the two on held-out halves
    if correction == "auto":
        from sklearn.model_selection import GroupKFold

        loss = {"none": 0.0, "ridge": 0.0}
        for a_idx, b_idx in GroupKFold(n_splits=2).split(X, groups=groups):
            for mode in loss:
                fit = fit_final(X[a_idx], w_res[a_idx], y_res[a_idx], groups[a_idx], cfg, seed, mode)
                pred = fit.predict(X[b_idx])[0]
                loss[mode] += float(np.sum((y_res[b_idx] - w_res[b_idx] * pred) ** 2))
        correction = min(loss, key=loss.get)
    linear = None
    target = y_res
    if correction == "ridge":
        linear = fit_linear_cate(X, w_res, y_res, groups)
        target = y_res - w_res * linear.predict(X)[0]
    forest = _final_forest(cfg, seed)
    forest.fit(X, w_res.reshape(-1, 1), target)
    forest.n_jobs = 1  # reproducible predictions (see _single_thread_predictions)
    return FinalFit(forest=forest, linear=linear, correction=correction)


def _final_forest(cfg, seed: int):
    from econml.grf import CausalForest

    return CausalForest(n_estimators=cfg.n_estimators, min_samples_leaf=cfg.min_samples_leaf,
                        max_samples=cfg.max_samples, honest=True, inference=True, fit_intercept=True,
                        n_jobs=cfg.n_jobs, random_state=seed)


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
    """Fit one causal forest per fold on training folds only; predict CATE (and 95 % interval) out of fold.

    Args:
        X: (n, p) features. Y: (n,) outcomes. W: (n,) binary treatment. clusters: (n,) cluster labels.
        folds: (n,) fold index from :func:`make_folds`.
        cfg: a :class:`pipeline.config.CateConfig`.
        seed: random seed (each fold uses ``seed + fold``).
        with_outcome_model: also fit an outcome model m(x) = E[Y|X] on the same training folds (DR scores).
        scheme: ``kfold`` or ``sequential`` (see :func:`training_splits`); with ``sequential`` the units of
            fold 0 get NaN.
        nuisances: shared nuisances from :func:`fit_nuisances` (same folds and scheme). When given, only
            the final causal forest is fitted here, on the residualised outcome and treatment (the
            R-learner stage of ``CausalForestDML``), and ``m_hat``/``e_hat`` come from the shared models.
    """
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=0))
        raise EstimationError("features", "finite feature values",
                              f"NaN/inf in {len(bad)} columns (e.g. {bad[:5].tolist()})",
                              "impute covariates before the cate stage")
    splits = training_splits(folds, scheme)
    check_design(Y, W, clusters, splits)
    n = len(Y)
    tau, lo, hi, e_hat = (np.full(n, np.nan) for _ in range(4))
    m_hat = np.full(n, np.nan) if with_outcome_model else None
    groups = np.asarray(clusters)
    importances = []
    correction = cfg.linear_correction
    corrections = {}
    if nuisances is None and correction != "none":  # the correction needs the residuals: fit them here
        nuisances = fit_nuisances(X, Y, W, clusters, splits, cfg, seed)
    it = splits
    if progress:
        from tqdm import tqdm
        it = tqdm(splits, desc=desc, unit="fold")
    z = 1.959963984540054  # 97.5 % normal quantile
    for f, tr, te in it:
        if nuisances is not None:
            m_tr, e_tr, m_te, e_te = nuisances[f]
            fit = fit_final(X[tr], W[tr] - e_tr, Y[tr] - m_tr, groups[tr], cfg, seed + f, correction)
            point, var = fit.predict(X[te])
            se = np.sqrt(np.maximum(var, 0.0))
            tau[te], lo[te], hi[te] = point, point - z * se, point + z * se
            e_hat[te] = e_te
            if with_outcome_model:
                m_hat[te] = m_te
            importances.append(fit.importance(X[te]))
            corrections[int(f)] = fit.correction
            continue
        est = make_learner(cfg, seed + f)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*Co-variance matrix is undertermined.*")
            warnings.filterwarnings("ignore", message=".*out-of-bag predictions.*")
            est.fit(Y[tr], W[tr], X=X[tr], groups=groups[tr])
            _single_thread_predictions(est)
            tau[te] = est.effect(X[te])
            lo_f, hi_f = est.effect_interval(X[te], alpha=0.05)
            imp = _importances(est)
            if imp is not None:
                importances.append(imp)
        lo[te], hi[te] = lo_f.reshape(-1), hi_f.reshape(-1)
        if cfg.propensity == "estimate":
            e_model = LogisticRegression(max_iter=1000).fit(X[tr], W[tr])
            e_hat[te] = e_model.predict_proba(X[te])[:, 1]
        elif cfg.propensity == "share":
            e_hat[te] = W[tr].mean()
        else:
            e_hat[te] = float(cfg.propensity)
        if with_outcome_model:
            my = ReproducibleForestRegressor(n_estimators=cfg.nuisance_trees, min_samples_leaf=10,
                                             max_features=0.5, n_jobs=cfg.n_jobs, random_state=seed + 1000 + f)
            my.fit(X[tr], Y[tr])
            m_hat[te] = my.predict(X[te])
    return CrossFitResult(tau_hat=tau, lower=lo, upper=hi, fold=folds.copy(), m_hat=m_hat, e_hat=e_hat,
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


def run_cate(units_path, features_dir, cfg, seed: int, out_dir, progress: bool = True) -> pd.DataFrame:
    """Cross-fit causal forests on every scale set's features and write the cate stage's outputs.

    Two cross-fitting schemes run on the same cluster-grouped folds (shared by all sets):

    * ``kfold`` gives every unit a CATE (``tau_hat``, 95 % interval) from a forest fitted on the other
      folds: for maps, correlations with a known truth and the AIPW ATE;
    * ``sequential`` predicts fold k from folds 0..k-1 only (``priority_seq``, NaN in fold 0): the
      priorities and DR scores (``dr_score_seq``) of the calibrated RATE test (see pipeline.evaluate).

    Writes ``cate.parquet`` (set, unit, cluster, fold, tau_hat, lower, upper, priority_seq), ``dr.parquet``
    (per unit: W, Y, K-fold DR score, m_hat, propensity, and the sequential DR score, all from the
    ``cfg.dr_reference`` set) and ``sets.json``.
    """
    import json
    from pathlib import Path

    from .artifacts import read_npy, require, write_json, write_with
    from .errors import ConfigError
    from .sites import read_units

    units = read_units(units_path)
    features_dir, out = Path(features_dir), Path(out_dir)
    index = json.loads(require(features_dir / "index.json", "the features stage's index.json").read_text())
    ids = units["unit_id"].astype(str)
    unknown = set(index["unit_id"]) - set(ids)
    if unknown:
        raise EstimationError(str(features_dir / "index.json"), "units that are in units.parquet",
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
    folds = make_folds(clusters, cfg.folds, seed)
    rows = []
    importance = {}
    corrections = {}
    ref = ref_seq = None
    shared = {"kfold": None, "sequential": None}
    if cfg.shared_nuisance:  # nuisances fitted once on the reference set's features, reused by every set
        Xn = read_npy(features_dir / f"{cfg.dr_reference}.npy")
        shared = {sch: fit_nuisances(Xn, Y, W, clusters, training_splits(folds, sch), cfg, seed + off)
                  for sch, off in (("kfold", 0), ("sequential", 500))}
    for name in sets:
        X = read_npy(features_dir / f"{name}.npy")
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
    write_with(out / "dr.parquet", lambda tmp: dr.to_parquet(tmp, index=False))
    write_json(out / "sets.json", {k: v["scales"] for k, v in sets.items()})
    write_json(out / "importance.json", importance)
    write_json(out / "corrections.json", {"linear_correction": cfg.linear_correction, "chosen": corrections})
    write_with(out / "cate.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    return table
