"""Cross-fitting, honesty, DR scores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.cate import crossfit_cate, dr_scores, make_folds
from pipeline.config import CateConfig
from pipeline.errors import EstimationError

SMALL = CateConfig(folds=3, n_estimators=24, nuisance_trees=10, n_jobs=1)


def test_folds_group_clusters_and_balance():
    clusters = np.repeat(np.arange(31), 3)
    folds = make_folds(clusters, 4, seed=1)
    for c in np.unique(clusters):
        assert len(np.unique(folds[clusters == c])) == 1
    sizes = np.bincount(folds) // 3
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, make_folds(clusters, 4, seed=1))


def test_more_folds_than_clusters():
    with pytest.raises(EstimationError) as exc:
        make_folds(np.array([1, 1, 2, 2]), 3, seed=0)
    assert exc.value.where == "cate.folds"


def test_dr_scores_brute_force():
    rng = np.random.default_rng(0)
    n = 25
    Y, W = rng.normal(size=n), rng.integers(0, 2, n)
    tau, m, e = rng.normal(size=n), rng.normal(size=n), rng.uniform(0.2, 0.8, n)
    got = dr_scores(Y, W, tau, m, e)
    for i in range(n):
        mu0 = m[i] - e[i] * tau[i]
        mu1 = m[i] + (1 - e[i]) * tau[i]
        aipw = mu1 - mu0 + W[i] * (Y[i] - mu1) / e[i] - (1 - W[i]) * (Y[i] - mu0) / (1 - e[i])
        assert got[i] == pytest.approx(aipw, abs=1e-10)
    np.testing.assert_allclose(dr_scores(Y, W, tau, m, 0.4), dr_scores(Y, W, tau, m, np.full(n, 0.4)))


def test_dr_scores_overlap_warning_and_errors():
    Y, W = np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dr_scores(Y, W, np.zeros(3), np.zeros(3), np.array([0.5, 0.99, 0.5]))
    assert any("overlap" in str(r.message) for r in rec)
    with pytest.raises(EstimationError) as exc:
        dr_scores(Y, W, np.zeros(3), np.zeros(3), np.array([0.5, 1.0, 0.5]))
    assert exc.value.where == "propensity"
    with pytest.raises(EstimationError):
        dr_scores(Y, np.array([0, 2, 1]), np.zeros(3), np.zeros(3), 0.5)


def _rct(n_clusters=40, per=5, seed=0):
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(n_clusters), per)
    X = rng.normal(size=(n_clusters * per, 3))
    W = np.repeat(rng.permutation(np.arange(n_clusters) % 2), per)
    Y = X[:, 1] + W * (1.0 + X[:, 0]) + rng.normal(size=len(W))
    return X, Y, W, clusters


def test_crossfit_is_honest():
    """Changing the outcomes of one fold does not change that fold's CATE predictions."""
    X, Y, W, clusters = _rct()
    folds = make_folds(clusters, 3, seed=0)
    a = crossfit_cate(X, Y, W, clusters, folds, SMALL, seed=1, with_outcome_model=True)
    Y2 = Y.copy()
    Y2[folds == 0] += np.random.default_rng(5).normal(0, 10, (folds == 0).sum())
    b = crossfit_cate(X, Y2, W, clusters, folds, SMALL, seed=1, with_outcome_model=True)
    np.testing.assert_array_equal(a.tau_hat[folds == 0], b.tau_hat[folds == 0])
    np.testing.assert_array_equal(a.m_hat[folds == 0], b.m_hat[folds == 0])
    assert not np.array_equal(a.tau_hat[folds == 1], b.tau_hat[folds == 1])
    assert np.all(a.lower <= a.tau_hat) and np.all(a.tau_hat <= a.upper)


def test_crossfit_rejects_bad_design():
    X, Y, W, clusters = _rct(n_clusters=6)
    folds = make_folds(clusters, 3, seed=0)
    W1 = (clusters == 0).astype(int)
    with pytest.raises(EstimationError) as exc:
        crossfit_cate(X, Y, W1, clusters, folds, SMALL, seed=1)
    assert exc.value.where == "W"
    Xn = X.copy()
    Xn[0, 1] = np.nan
    with pytest.raises(EstimationError) as exc:
        crossfit_cate(Xn, Y, W, clusters, folds, SMALL, seed=1)
    assert exc.value.where == "features"
    with pytest.raises(EstimationError):
        crossfit_cate(X, np.ones_like(Y), W, clusters, folds, SMALL, seed=1)


def test_dr_mean_recovers_ate():
    X, Y, W, clusters = _rct(n_clusters=80, per=5, seed=3)
    folds = make_folds(clusters, 3, seed=0)
    res = crossfit_cate(X, Y, W, clusters, folds, SMALL, seed=1, with_outcome_model=True)
    scores = dr_scores(Y, W, res.tau_hat, res.m_hat, 0.5)
    se = scores.std() / np.sqrt(len(scores)) * 2  # loose: clustering of W
    assert abs(scores.mean() - 1.0) < 3 * se


@pytest.mark.parametrize("learner", ["causal_forest", "dr_forest"])
def test_parallel_crossfit_is_bitwise_reproducible(learner):
    X, Y, W, clusters = _rct(n_clusters=30, per=4, seed=2)
    folds = make_folds(clusters, 3, seed=0)
    cfg = CateConfig(learner=learner, folds=3, n_estimators=40, nuisance_trees=20, n_jobs=2)
    a = crossfit_cate(X, Y, W, clusters, folds, cfg, seed=1, with_outcome_model=True)
    b = crossfit_cate(X, Y, W, clusters, folds, cfg, seed=1, with_outcome_model=True)
    np.testing.assert_array_equal(a.tau_hat, b.tau_hat)
    np.testing.assert_array_equal(a.upper, b.upper)
    np.testing.assert_array_equal(a.m_hat, b.m_hat)


def test_sequential_scheme_uses_only_earlier_folds():
    """Fold k's sequential predictions do not change when the outcomes of folds >= k change."""
    X, Y, W, clusters = _rct(n_clusters=45, per=4, seed=4)
    folds = make_folds(clusters, 3, seed=0)
    a = crossfit_cate(X, Y, W, clusters, folds, SMALL, seed=1, with_outcome_model=True, scheme="sequential")
    assert np.isnan(a.tau_hat[folds == 0]).all() and np.isfinite(a.tau_hat[folds > 0]).all()
    Y2 = Y.copy()
    Y2[folds >= 1] += 5.0 * np.random.default_rng(1).normal(size=(folds >= 1).sum())
    b = crossfit_cate(X, Y2, W, clusters, folds, SMALL, seed=1, with_outcome_model=True, scheme="sequential")
    np.testing.assert_array_equal(a.tau_hat[folds == 1], b.tau_hat[folds == 1])
    np.testing.assert_array_equal(a.m_hat[folds == 1], b.m_hat[folds == 1])
    assert not np.array_equal(a.tau_hat[folds == 2], b.tau_hat[folds == 2])


def test_shared_nuisances_are_honest_and_reproducible():
    """Nuisances fitted once for every scale set: a fold's predictions never see its own outcomes."""
    from pipeline.cate import fit_nuisances, training_splits

    X, Y, W, clusters = _rct(n_clusters=45, per=4, seed=6)
    folds = make_folds(clusters, 3, seed=0)
    cfg = CateConfig(folds=3, n_estimators=40, nuisance_trees=20, n_jobs=2, shared_nuisance=True)

    def run(y):
        nu = fit_nuisances(X, y, W, clusters, training_splits(folds, "kfold"), cfg, 1)
        return crossfit_cate(X[:, :2], y, W, clusters, folds, cfg, 1, with_outcome_model=True, nuisances=nu)

    a = run(Y)
    b = run(Y)
    np.testing.assert_array_equal(a.tau_hat, b.tau_hat)
    Y2 = Y.copy()
    Y2[folds == 0] += 5.0 * np.random.default_rng(2).normal(size=(folds == 0).sum())
    c = run(Y2)
    np.testing.assert_array_equal(a.tau_hat[folds == 0], c.tau_hat[folds == 0])
    np.testing.assert_array_equal(a.m_hat[folds == 0], c.m_hat[folds == 0])
    assert np.corrcoef(a.tau_hat, X[:, 0])[0, 1] > 0.5
    assert np.all(a.lower <= a.tau_hat) and np.all(a.tau_hat <= a.upper)
