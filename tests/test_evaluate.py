"""Evaluation helpers: cluster-robust means and the difference in means."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import cluster_mean_se, difference_in_means


def test_cluster_mean_se_singletons_and_brute_force():
    rng = np.random.default_rng(0)
    v = rng.normal(size=50)
    mean, se = cluster_mean_se(v, np.arange(50))
    assert mean == pytest.approx(v.mean())
    assert se == pytest.approx(v.std(ddof=1) / np.sqrt(50))
    cl = np.repeat(np.arange(10), 5)
    _, se_c = cluster_mean_se(v, cl)
    sums = np.array([(v[cl == g] - v.mean()).sum() for g in range(10)])
    assert se_c == pytest.approx(np.sqrt(10 / 9 * (sums ** 2).sum()) / 50)


def test_difference_in_means_matches_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    cl = np.repeat(np.arange(30), 4)
    W = np.repeat(np.arange(30) % 2, 4)
    Y = 0.7 * W + np.repeat(rng.normal(size=30), 4) + rng.normal(size=120)
    est, se = difference_in_means(Y, W, cl)
    fit = sm.OLS(Y, sm.add_constant(W.astype(float))).fit(cov_type="cluster", cov_kwds={"groups": cl})
    assert est == pytest.approx(fit.params[1])
    assert se == pytest.approx(fit.bse[1], rel=1e-8)
