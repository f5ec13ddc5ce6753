"""RATE: brute force against grf's definitions, nulls, invariances, a pinned value and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.core.errors import EstimationError
from pipeline.estimate.rate import DEFAULT_Q, rate


def reference_rate(dr, prio, w=None, target="AUTOC", q=DEFAULT_Q):
    """Loop-based RATE and TOC written from the definitions in grf's rank_average_treatment_effect.fit.

    Units are ordered by decreasing priority (ties keep input order); each unit's score is replaced by the
    weighted mean score of its tie group; TOC_j = weighted mean of the first j scores - ATE; AUTOC and QINI
    are weighted sums of TOC_j; the grid TOC at q is the weighted mean score of the top q of the weight
    (a fraction of the next unit included) minus the ATE.
    """
    n = len(dr)
    w = [1.0] * n if w is None else [wi / sum(w) for wi in w]
    order = sorted(range(n), key=lambda i: -prio[i])  # Python's sort is stable
    groups = {}
    for i in order:
        groups.setdefault(prio[i], []).append(i)
    scores = []
    for i in order:
        g = groups[prio[i]]
        scores.append(sum(dr[j] * w[j] for j in g) / sum(w[j] for j in g))
    ws = [w[i] for i in order]
    total = sum(ws)
    ate = sum(s * x for s, x in zip(scores, ws)) / total
    toc, num, den = [], 0.0, 0.0
    for s, x in zip(scores, ws):
        num += s * x
        den += x
        toc.append(num / den - ate)
    if target == "AUTOC":
        value = sum(t * x for t, x in zip(toc, ws)) / total
    else:
        cum, value = 0.0, 0.0
        for t, x in zip(toc, ws):
            cum += x
            value += cum / total * x * t
        value /= total
    grid = []
    for qq in q:
        budget = qq * total
        num, used = 0.0, 0.0
        for s, x in zip(scores, ws):
            take = min(x, budget - used)
            if take <= 1e-15 * total:
                break
            num += take * s
            used += take
        grid.append(num / used - ate)
    return value, np.array(grid)


@pytest.mark.parametrize("target", ["AUTOC", "QINI"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_brute_force(target, ties, weighted):
    rng = np.random.default_rng(3)
    n = 37
    dr = rng.normal(1.0, 2.0, n)
    prio = rng.integers(0, 6, n).astype(float) if ties else rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    q = np.array([0.03, 0.1, 0.25, 0.5, 0.77, 1.0])
    res = rate(dr, prio, target=target, sample_weights=w, q=q, n_boot=10, seed=1)
    ref, ref_grid = reference_rate(dr.tolist(), prio.tolist(), None if w is None else w.tolist(), target, q)
    assert res.estimate == pytest.approx(ref, abs=1e-10)
    np.testing.assert_allclose(res.toc["estimate"].to_numpy(), ref_grid, atol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_full_grid_toc_averages_to_autoc(weighted):
    """As in grf: the TOC on the grid of cumulative weights averages (weighted) to the AUTOC; TOC(1) = 0."""
    rng = np.random.default_rng(6)
    n = 60
    dr, prio = rng.normal(size=n), rng.normal(size=n)
    w = rng.choice([1.0, 2.0], n) if weighted else np.ones(n)
    order = np.argsort(-prio, kind="stable")
    q = np.cumsum(w[order]) / w.sum()
    q[-1] = 1.0
    res = rate(dr, prio, sample_weights=w, q=q, n_boot=0)
    toc = res.toc["estimate"].to_numpy()
    assert np.average(toc, weights=w[order]) == pytest.approx(res.estimate, abs=1e-10)
    assert toc[-1] == pytest.approx(0.0, abs=1e-12)


def test_two_rules_is_paired_difference():
    rng = np.random.default_rng(4)
    n = 200
    dr = rng.normal(size=n)
    p1, p2 = rng.normal(size=n), rng.normal(size=n)
    cl = rng.integers(0, 40, n)
    both = rate(dr, np.column_stack([p1, p2]), clusters=cl, n_boot=100, seed=5)
    one = rate(dr, p1, clusters=cl, n_boot=100, seed=5)
    two = rate(dr, p2, clusters=cl, n_boot=100, seed=5)
    assert both.estimates[0] == pytest.approx(one.estimate, abs=1e-12)
    assert both.estimates[1] == pytest.approx(two.estimate, abs=1e-12)
    assert both.estimate == pytest.approx(one.estimate - two.estimate, abs=1e-12)
    # same draws: the per-rule SEs equal the single-rule runs with the same seed
    assert both.std_errs[0] == pytest.approx(one.std_err, rel=1e-12)
    np.testing.assert_allclose(both.boot[:, 2], both.boot[:, 0] - both.boot[:, 1])
    assert both.std_err == pytest.approx(np.std(both.boot[:, 2], ddof=1))
    assert set(both.toc["priority"]) == {"priority1", "priority2", "priority1 - priority2"}


def test_bootstrap_se_matches_per_replicate_resort():
    """The sort-once bootstrap equals a plain loop that re-sorts every half sample (same draws)."""
    rng = np.random.default_rng(8)
    n = 120
    dr = rng.normal(size=n)
    prio = rng.normal(size=n)
    cl = rng.integers(0, 30, n)
    res = rate(dr, prio, clusters=cl, n_boot=40, seed=11)
    labels = np.unique(cl, return_inverse=True)[1]
    draw_rng = np.random.default_rng(11)
    stats_ = []
    for _ in range(40):
        chosen = np.zeros(labels.max() + 1, bool)
        chosen[draw_rng.choice(labels.max() + 1, (labels.max() + 1) // 2, replace=False)] = True
        idx = np.flatnonzero(chosen[labels])
        stats_.append(reference_rate(dr[idx].tolist(), prio[idx].tolist())[0])
    np.testing.assert_allclose(res.boot[:, 0], stats_, atol=1e-10)


def test_invariances():
    rng = np.random.default_rng(9)
    n = 150
    dr = rng.normal(0.5, 1.5, n)
    prio = rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n)
    base = rate(dr, prio, sample_weights=w, n_boot=20, seed=2)
    # permuting units changes nothing in the point estimate
    perm = rng.permutation(n)
    assert rate(dr[perm], prio[perm], sample_weights=w[perm], n_boot=2, seed=2).estimate == pytest.approx(
        base.estimate, abs=1e-12)
    # scaling weights changes nothing
    scaled = rate(dr, prio, sample_weights=w * 7.3, n_boot=20, seed=2)
    assert scaled.estimate == pytest.approx(base.estimate, abs=1e-12)
    assert scaled.std_err == pytest.approx(base.std_err, rel=1e-9)
    # duplicating units is approximately the same as doubling their weights (TOC evaluated between the
    # two copies is the only difference, as in grf's own test)
    dupe = rng.choice(n, 90, replace=False)
    dup = rate(np.r_[dr, dr[dupe]], np.r_[prio, prio[dupe]], n_boot=2, seed=2)
    w2 = np.ones(n)
    w2[dupe] = 2
    doubled = rate(dr, prio, sample_weights=w2, n_boot=2, seed=2)
    assert dup.estimate == pytest.approx(doubled.estimate, abs=0.01)
    np.testing.assert_allclose(dup.toc["estimate"], doubled.toc["estimate"], atol=0.01)
    # clusters of size one are the same as no clusters (same draws, same SE)
    no_cl = rate(dr, prio, n_boot=30, seed=4)
    singletons = rate(dr, prio, clusters=np.arange(n) * 3 + 1, n_boot=30, seed=4)
    assert singletons.std_err == no_cl.std_err
    # a monotone transform of the priorities changes nothing
    assert rate(dr, np.exp(prio), n_boot=30, seed=4).estimate == pytest.approx(no_cl.estimate, abs=1e-12)
    # adding a constant to every score leaves RATE unchanged
    assert rate(dr + 5.0, prio, n_boot=2, seed=4).estimate == pytest.approx(no_cl.estimate, abs=1e-10)


def test_deterministic_for_seed():
    rng = np.random.default_rng(1)
    dr, prio = rng.normal(size=80), rng.normal(size=80)
    a = rate(dr, prio, n_boot=50, seed=123)
    b = rate(dr, prio, n_boot=50, seed=123)
    assert a.std_err == b.std_err
    assert rate(dr, prio, n_boot=50, seed=124).std_err != a.std_err


def test_detects_real_heterogeneity():
    rng = np.random.default_rng(12)
    n = 2000
    x = rng.normal(size=n)
    dr = 1.0 + x + rng.normal(0, 2, n)
    res = rate(dr, x, n_boot=200, seed=3)
    assert res.ratio > 4
    assert rate(dr, -x, n_boot=200, seed=3).ratio < -4  # reversed priorities: the sign flips


def test_null_calibration():
    """Random priorities: |ratio| > 1.96 in about 5 % of 500 replications (AUTOC, clustered)."""
    rng = np.random.default_rng(2026)
    reps, n = 500, 240
    rejections = 0
    for r in range(reps):
        cl = np.repeat(np.arange(60), 4)
        dr = rng.normal(1.0, 1.0, n) + np.repeat(rng.normal(0, 0.5, 60), 4)
        prio = rng.normal(size=n)
        rejections += abs(rate(dr, prio, clusters=cl, n_boot=200, seed=r).ratio) > 1.96
    assert 0.03 <= rejections / reps <= 0.07


def test_pinned_value():
    rng = np.random.default_rng(20211115)
    dr = rng.normal(0.5, 1.0, 100)
    prio = np.round(rng.normal(size=100), 1)
    cl = np.repeat(np.arange(25), 4)
    res = rate(dr, prio, target="QINI", clusters=cl, n_boot=100, seed=42)
    assert res.estimate == pytest.approx(PINNED_QINI, abs=1e-12)
    assert res.std_err == pytest.approx(PINNED_QINI_SE, abs=1e-12)
    assert reference_rate(dr.tolist(), prio.tolist(), target="QINI")[0] == pytest.approx(PINNED_QINI, abs=1e-12)


PINNED_QINI = 0.025545566419825052  # equals reference_rate() on the same inputs (checked below)
PINNED_QINI_SE = 0.03945166821451776


@pytest.mark.parametrize("kwargs, where", [
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0], priorities=[1.0, 2.0, 3.0]), "priorities"),
    (dict(dr_scores=[1.0, np.nan, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5]), "dr_scores"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, np.inf, 4, 5]), "priorities"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], sample_weights=[1, 1, -1, 1, 1]),
     "sample_weights"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], q=[0.5, 0.2, 1.0]), "q"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], q=[0.5, 0.9]), "q"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], clusters=[0, 0, 0, 1, 1]),
     "clusters"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], target="AUC"), "target"),
    (dict(dr_scores=[1.0, 2.0, 3.0, 4.0, 5.0], priorities=[1, 2, 3, 4, 5], clusters=[0, 1, 2]), "clusters"),
])
def test_bad_input_names_the_argument(kwargs, where):
    with pytest.raises(EstimationError) as exc:
        rate(**kwargs, n_boot=5)
    assert exc.value.where == where
    assert "Fix:" in str(exc.value)


def test_constant_priorities_warn():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = rate(np.arange(10.0), np.ones(10), n_boot=5, seed=0)
    assert any("constant" in str(r.message) for r in rec)
    assert res.estimate == 0.0


@pytest.mark.parametrize("target", ["AUTOC", "QINI"])
def test_constant_priorities_give_zero_and_no_ratio(target):
    """Constant priorities rank nobody first: RATE 0, SE 0 and an undefined ratio, never rounding noise
    divided by rounding noise (scores with a large mean used to give about 2e-15 / 1e-15 = 1.6)."""
    rng = np.random.default_rng(3)
    scores = 1e3 + rng.normal(size=400) * 7.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = rate(scores, np.full(400, 0.37), target=target, clusters=np.arange(400) // 4, n_boot=50, seed=0)
        paired = rate(scores, np.column_stack([scores, np.full(400, 0.37)]), target=target,
                      clusters=np.arange(400) // 4, n_boot=50, seed=0)
    assert res.estimate == 0.0 and res.std_err == 0.0 and np.isnan(res.ratio) and np.isnan(res.p_value())
    assert (res.toc["estimate"] == 0).all()
    assert paired.estimates[1] == 0.0 and paired.estimate == paired.estimates[0]


def test_priorities_tied_at_15_significant_digits_as_in_grf():
    """Priorities are grouped as grf does through R's as.factor (text with 15 significant digits).

    0.1 + 0.2 and 0.3 are one tie group there, and so here; values that differ within 15 digits stay distinct.
    """
    rng = np.random.default_rng(4)
    scores = rng.normal(size=200)
    near = np.where(np.arange(200) % 2 == 0, 0.1 + 0.2, 0.3)
    assert near[0] != near[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rate(scores, near, n_boot=10, seed=0).estimate == 0.0
    distinct = np.where(np.arange(200) % 2 == 0, 0.3 + 1e-13, 0.3)
    tied_ref = rate(scores, (np.arange(200) % 2 == 0).astype(float), n_boot=10, seed=0)
    assert rate(scores, distinct, n_boot=10, seed=0).estimate == pytest.approx(tied_ref.estimate, abs=1e-14)


@pytest.mark.parametrize("target", ["AUTOC", "QINI"])
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_kernel_equals_subset_statistic(target, ties):
    """The streaming kernel (compiled and pure Python) equals the NumPy statistic on each half sample."""
    from pipeline.estimate._rate_kernel import bootstrap_statistics
    from pipeline.estimate.rate import _dense_rank, _Sorted, half_sample_draws

    rng = np.random.default_rng(21)
    n = 300
    dr = rng.normal(size=n)
    prio = rng.integers(0, 15, n).astype(float) if ties else rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n)
    w = w / w.sum()
    cl = _dense_rank(rng.integers(0, 40, n))
    q = np.array([0.001, 0.05, 0.3, 0.5, 0.99, 1.0])
    r = _Sorted(_dense_rank(prio), dr * w, w, cl)
    chosen = half_sample_draws(40, 25, seed=3)
    expected = np.stack([r.statistic(c[r.cluster], q, target) for c in chosen])
    for compiled in (True, False):
        got = bootstrap_statistics(r.drw, r.w, r.group, r.cluster, chosen, r.has_ties, r.n_groups, q,
                                   target == "QINI", compiled=compiled)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
