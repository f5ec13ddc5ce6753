"""The compiled causal forest (pipeline.estimate.forest): brute-force checks of its trees, predictions and
variances, invariances, a pinned value, and statistical agreement with econml's CausalForest (the
reference learner) on the same data: estimates, interval coverage and RATE."""

import warnings

import numpy as np
import pytest
from scipy.special import erfc

from pipeline.core.errors import EstimationError
from pipeline.estimate.forest import GROUP_SIZE, CompiledCausalForest


def _data(n=600, p=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    t = rng.integers(0, 2, n) - 0.5
    tau = 1.0 + np.maximum(X[:, 1], 0.0)
    y = X[:, 0] + t * tau + rng.normal(size=n)
    return X, t, y, tau


def _leaf(forest, b, x):
    """Brute-force traversal of tree b for one row."""
    base, node = forest.offsets_[b], 0
    while forest.left_[base + node] >= 0:
        go_left = x[forest.feature_[base + node]] <= forest.threshold_[base + node]
        node = forest.left_[base + node] + (0 if go_left else 1)
    return base + node


def _leaves(forest, X):
    return np.array([[_leaf(forest, b, x) for b in range(len(forest.offsets_) - 1)] for x in X])


def test_leaves_hold_the_means_of_their_honest_rows_only():
    """Honesty: each leaf's stored means are those of the tree's honest rows routed to it (not of its splitting
    rows), and every leaf holds at least min_samples_leaf rows of both halves."""
    X, t, y, _ = _data()
    f = CompiledCausalForest(n_estimators=8, min_samples_leaf=5, max_features=5, n_jobs=1, random_state=1).fit(X, t, y)
    for b in range(8):
        split_rows, honest_rows = f.tree_rows(b)
        assert len(set(split_rows) & set(honest_rows)) == 0 and len(split_rows) + len(honest_rows) == f.n_sub_
        leaf_of = {i: _leaf(f, b, X[i]) for i in np.concatenate([split_rows, honest_rows])}
        leaves = [f.offsets_[b] + k for k in range(f.offsets_[b + 1] - f.offsets_[b]) if f.left_[f.offsets_[b] + k] < 0]
        assert len(leaves) > 4
        for leaf in leaves:
            hon = np.array([i for i in honest_rows if leaf_of[i] == leaf])
            spl = [i for i in split_rows if leaf_of[i] == leaf]
            assert len(hon) >= 5 and len(spl) >= 5
            expected = [t[hon].mean(), y[hon].mean(), (t[hon] ** 2).mean(), (t[hon] * y[hon]).mean()]
            np.testing.assert_allclose(f.leaf_stats_[leaf], expected, rtol=1e-12)


def test_root_split_maximises_grf_criterion_by_brute_force():
    """The root of every tree splits where grf's criterion, over every feature and every admissible cut of the
    splitting rows (children of at least max(min leaf, 5 % of the node) rows on both halves), is largest."""
    X, t, y, _ = _data(n=300, p=3)
    f = CompiledCausalForest(n_estimators=4, min_samples_leaf=5, max_features=3, n_jobs=1, random_state=2).fit(X, t, y)
    for b in range(4):
        tr, va = f.tree_rows(b)
        tt, yy = t[tr], y[tr]
        dt = tt - tt.mean()
        theta = np.sum(dt * (yy - yy.mean())) / np.sum(dt ** 2)
        rho = dt * ((yy - yy.mean()) - theta * dt) / np.mean(dt ** 2)
        n, m = len(tr), len(va)
        n_min, m_min = max(5, int(np.ceil(0.05 * n))), max(5, int(np.ceil(0.05 * m)))
        best = (-1.0, None, None)
        for j in range(3):
            xs = np.unique(X[tr, j])
            for lo, hi in zip(xs[:-1], xs[1:]):
                cut = lo + (hi - lo) / 2
                left = X[tr, j] <= cut
                nl, ml = left.sum(), (X[va, j] <= cut).sum()
                if min(nl, n - nl) < n_min or min(ml, m - ml) < m_min:
                    continue
                score = rho[left].sum() ** 2 / nl + rho[~left].sum() ** 2 / (n - nl)
                if score > best[0]:
                    best = (score, j, cut)
        root = f.offsets_[b]
        assert f.feature_[root] == best[1]
        assert f.threshold_[root] == pytest.approx(best[2], rel=0, abs=1e-12)


def _econml_variance(S, theta, beta, group_size):
    """Econml's bootstrap-of-little-bags variance of theta (its _predict_point_and_var, written out for one row
    from the per-tree leaf means S (trees, 4): E t, E y, E t^2, E t y)."""
    J = np.array([[S[:, 2].mean(), S[:, 0].mean()], [S[:, 0].mean(), 1.0]])
    inv = np.linalg.pinv(J)
    M = np.column_stack([S[:, 2] * theta + S[:, 0] * beta - S[:, 3], S[:, 0] * theta + beta - S[:, 1]])
    bags = M.reshape(-1, group_size, 2)
    bag_mean = bags.mean(axis=1)
    moment = bag_mean.mean(axis=0)
    sq_between = np.einsum("gi,gj->ij", bag_mean, bag_mean) / len(bags)
    var_between = sq_between - np.outer(moment, moment)
    var_total = np.einsum("gti,gtj->ij", bags, bags) / (len(bags) * group_size)
    correction = (var_total - sq_between) / (group_size - 1)
    pred_var = (inv @ var_between @ inv.T)[0, 0]
    pred_corr = (inv @ correction @ inv.T)[0, 0]
    naive = pred_var - pred_corr
    se = max(pred_var, pred_corr) * np.sqrt(2.0 / len(bags))
    z = naive / max(se, 1e-10)
    return naive + se * (np.exp(-z * z / 2) / np.sqrt(2 * np.pi)) / (0.5 * erfc(-z / np.sqrt(2)))


def test_predictions_and_variances_equal_brute_force():
    """Point: the forest-weighted local regression of y on t (weights alpha_i(x) = mean over trees of
    1{i in leaf(x)} / |leaf(x)| over honest rows). Variance: econml's formula from the per-tree moments."""
    X, t, y, _ = _data(n=400, p=4, seed=3)
    f = CompiledCausalForest(n_estimators=16, max_features=2, n_jobs=1, random_state=4).fit(X, t, y)
    Xq = np.random.default_rng(5).normal(size=(7, 4))
    point, var = f.predict_and_var(Xq)
    np.testing.assert_array_equal(f.predict(Xq), point)
    leaves = _leaves(f, Xq)
    honest = [f.tree_rows(b)[1] for b in range(16)]
    for r, x in enumerate(Xq):
        alpha = np.zeros(len(y))
        for b in range(16):
            members = np.array([i for i in honest[b] if _leaf(f, b, X[i]) == leaves[r, b]])
            alpha[members] += 1.0 / len(members) / 16
        tw, yw = alpha @ t, alpha @ y
        theta = alpha @ ((t - tw) * (y - yw)) / (alpha @ (t - tw) ** 2)
        assert point[r, 0] == pytest.approx(theta, rel=1e-10)
        S = f.leaf_stats_[leaves[r]]
        assert var[r, 0, 0] == pytest.approx(_econml_variance(S, theta, yw - theta * tw, GROUP_SIZE), rel=1e-8)


def test_bitwise_same_for_any_thread_count_and_reproducible():
    X, t, y, _ = _data(n=500)
    fits = [CompiledCausalForest(n_estimators=40, n_jobs=j, random_state=7).fit(X, t, y) for j in (1, 2, 3)]
    outs = [np.concatenate([f.predict_and_var(X)[0].ravel(), f.predict_and_var(X)[1].ravel()]) for f in fits]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    other = CompiledCausalForest(n_estimators=40, n_jobs=1, random_state=8).fit(X, t, y).predict(X)
    assert not np.array_equal(other.ravel(), outs[0][:len(X)])


def test_invariances():
    """Scaling a feature by a power of two (exact in floating point) leaves every split and so every prediction
    bitwise as it was (cuts are midpoints, so a general monotone transform may move an honest row that lies
    between two splitting rows); shifting y does not move theta; scaling y scales theta and its variance."""
    X, t, y, _ = _data(n=500, seed=11)
    f = CompiledCausalForest(n_estimators=20, n_jobs=1, random_state=0)
    base_p, base_v = f.fit(X, t, y).predict_and_var(X)
    Xm = X.copy()
    Xm[:, 1] *= 4.0
    np.testing.assert_array_equal(f.fit(Xm, t, y).predict(Xm), base_p)
    np.testing.assert_allclose(f.fit(X, t, y + 5.0).predict(X), base_p, rtol=1e-8, atol=1e-10)
    p3, v3 = f.fit(X, t, 3.0 * y).predict_and_var(X)
    np.testing.assert_allclose(p3, 3.0 * base_p, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(v3, 9.0 * base_v, rtol=1e-6, atol=1e-12)


def test_pinned_value():
    X, t, y, _ = _data(n=300, seed=12)
    f = CompiledCausalForest(n_estimators=8, n_jobs=1, random_state=0).fit(X, t, y)
    point, var = f.predict_and_var(X[:2])
    np.testing.assert_allclose(point.ravel(), [1.0603545686, 1.7785117655], rtol=1e-9)
    np.testing.assert_allclose(var.ravel(), [0.1942624828, 0.0852468121], rtol=1e-9)


def test_no_heterogeneity_gives_flat_estimates_with_honest_intervals():
    """Null: a constant effect; estimates scatter around it and 95 % intervals cover it about as often as
    claimed (the forest's own variance)."""
    rng = np.random.default_rng(13)
    n = 2000
    X = rng.normal(size=(n, 5))
    t = rng.integers(0, 2, n) - 0.5
    y = X[:, 0] + 0.7 * t + rng.normal(size=n)
    f = CompiledCausalForest(n_estimators=200, max_features=5, random_state=0).fit(X, t, y)
    point, var = f.predict_and_var(X[:300])
    assert abs(point.mean() - 0.7) < 0.1
    cover = np.mean(np.abs(point.ravel() - 0.7) <= 1.96 * np.sqrt(var.ravel()))
    assert cover > 0.85


def test_bad_settings_are_typed_errors():
    X, t, y, _ = _data(n=100)
    with pytest.raises(EstimationError, match="multiple of 4"):
        CompiledCausalForest(n_estimators=10).fit(X, t, y)
    with pytest.raises(EstimationError, match="max_samples"):
        CompiledCausalForest(max_samples=0.7).fit(X, t, y)
    f = CompiledCausalForest(n_estimators=4).fit(X, t, y)
    with pytest.raises(EstimationError, match="features as in fit"):
        f.predict(X[:, :3])


def test_agrees_with_econml_causal_forest_on_the_same_data():
    """Statistical agreement with the reference learner (econml's CausalForest, same settings, same data):
    the two forests' estimates correlate, neither is much further from the truth, their standard errors are
    of the same size, their 95 % intervals cover the true effect about equally often, and ranking held-out
    units by either gives the same RATE (AUTOC with oracle DR scores) within its standard error."""
    from econml.grf import CausalForest

    from pipeline.estimate.rate import rate

    X, t, y, tau = _data(n=3000, p=8, seed=21)
    Xq, tq, yq, tauq = _data(n=2000, p=8, seed=22)
    opts = dict(n_estimators=400, min_samples_leaf=5, max_samples=0.45, max_features=8)
    ours = CompiledCausalForest(**opts, random_state=0).fit(X, t, y)
    ref = CausalForest(**opts, honest=True, inference=True, fit_intercept=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, t.reshape(-1, 1), y)
        pe, ve = ref.predict_and_var(Xq)
    po, vo = ours.predict_and_var(Xq)
    po, vo, pe, ve = po.ravel(), vo.ravel(), pe.ravel(), ve.ravel()
    assert np.corrcoef(po, pe)[0, 1] > 0.85
    rmse_o, rmse_e = np.sqrt(np.mean((po - tauq) ** 2)), np.sqrt(np.mean((pe - tauq) ** 2))
    assert rmse_o < 1.2 * rmse_e
    assert 0.7 < np.sqrt(vo).mean() / np.sqrt(ve).mean() < 1.5
    cover_o = np.mean(np.abs(po - tauq) <= 1.96 * np.sqrt(vo))
    cover_e = np.mean(np.abs(pe - tauq) <= 1.96 * np.sqrt(ve))
    assert cover_o > cover_e - 0.05 and cover_o > 0.8
    # oracle DR scores of the held-out units (known propensity 0.5 on t in {-0.5, 0.5}; mean function known)
    w = tq + 0.5
    m1, m0 = Xq[:, 0] + 0.5 * tauq, Xq[:, 0] - 0.5 * tauq
    dr = tauq + (w / 0.5) * (yq - m1) - ((1 - w) / 0.5) * (yq - m0)
    r_o = rate(dr, po, clusters=np.arange(len(dr)), target="AUTOC", n_boot=200, seed=0)
    r_e = rate(dr, pe, clusters=np.arange(len(dr)), target="AUTOC", n_boot=200, seed=0)
    assert abs(r_o.estimate - r_e.estimate) < 2 * max(r_o.std_err, r_e.std_err)
    assert r_o.estimate > 2 * r_o.std_err
