"""Evaluation helpers: cluster-robust means and the difference in means."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.estimate.inference import cluster_mean_se, difference_in_means


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


def test_combine_fold_rates_brute_force():
    from pipeline.estimate.rate import combine_fold_rates, rate

    rng = np.random.default_rng(2)
    parts = [rate(rng.normal(size=80), rng.normal(size=(80, 2)), n_boot=30, seed=k) for k in range(3)]
    comb = combine_fold_rates(parts)
    assert comb.estimate == pytest.approx(np.mean([p.estimate for p in parts]))
    assert comb.std_err == pytest.approx(np.sqrt(sum(p.std_err ** 2 for p in parts)) / 3)
    assert comb.estimates[0] == pytest.approx(np.mean([p.estimates[0] for p in parts]))
    toc = comb.toc[comb.toc["priority"] == "priority1"]["estimate"].to_numpy()
    expected = np.mean([p.toc[p.toc["priority"] == "priority1"]["estimate"].to_numpy() for p in parts], axis=0)
    np.testing.assert_allclose(toc, expected)


def _null_trial(rng, n_clusters=100, per=4, p=5):
    clusters = np.repeat(np.arange(n_clusters), per)
    n = n_clusters * per
    X = rng.normal(size=(n, p))
    W = np.repeat(rng.permutation(np.arange(n_clusters) % 2), per)
    Y = X[:, 0] + np.repeat(rng.normal(0, 0.5, n_clusters), per) + rng.normal(size=n) + 1.0 * W
    return X, Y, W, clusters


def _ridge_t_learner(X, Y, W, clusters, folds, scheme):
    """A cheap CATE learner (ridge T-learner) and outcome model, cross-fitted like pipeline.estimate.cate."""
    from pipeline.estimate.inference import ridge_t_learner

    return ridge_t_learner(X, Y, W, folds, scheme)


def _rejection_rate(reps, scheme, seed=11):
    from pipeline.estimate.cate import dr_scores, make_folds
    from pipeline.estimate.inference import sequential_rate
    from pipeline.estimate.rate import rate

    rng = np.random.default_rng(seed)
    rejected = 0
    for r in range(reps):
        X, Y, W, clusters = _null_trial(rng)
        folds = make_folds(clusters, 5, seed=r)
        tau, m = _ridge_t_learner(X, Y, W, clusters, folds, scheme)
        ok = np.isfinite(tau)
        scores = np.full(len(Y), np.nan)
        scores[ok] = dr_scores(Y[ok], W[ok], tau[ok], m[ok], 0.5)
        if scheme == "sequential":
            res = sequential_rate(scores, tau, clusters, folds, n_boot=100, seed=r)
        else:
            res = rate(scores, tau, clusters=clusters, n_boot=100, seed=r)
        rejected += abs(res.ratio) > 1.96
    return rejected / reps


def test_sequential_procedure_is_calibrated_under_the_null():
    """No heterogeneity, CATE priorities from a cross-fitted learner: the sequential test rejects ~5 %."""
    assert 0.02 <= _rejection_rate(200, "sequential") <= 0.09


@pytest.mark.slow
def test_sequential_calibration_500_and_pooled_kfold_is_not():
    """The documented finding: 500 null replications, sequential within 5 % +- 2 %, pooled K-fold far off."""
    assert 0.03 <= _rejection_rate(500, "sequential", seed=12) <= 0.07
    assert _rejection_rate(200, "kfold", seed=13) > 0.10


def test_calibration_test_matches_statsmodels_and_detects_heterogeneity():
    sm = pytest.importorskip("statsmodels.api")
    from pipeline.estimate.inference import calibration_test

    rng = np.random.default_rng(4)
    n = 600
    cl = np.repeat(np.arange(150), 4)
    x = rng.normal(size=n)
    W = rng.integers(0, 2, n)
    tau = 1 + x
    Y = x + W * tau + rng.normal(size=n)
    m_hat = x + 0.5 * tau  # E[Y|X] with e = 0.5
    tau_hat = tau + rng.normal(0, 0.3, n)
    res = calibration_test(Y, W, 0.5, m_hat, tau_hat, cl)
    X = np.column_stack([(W - 0.5) * tau_hat.mean(), (W - 0.5) * (tau_hat - tau_hat.mean())])
    fit = sm.OLS(Y - m_hat, X).fit(cov_type="cluster", cov_kwds={"groups": cl})
    assert res["mean_prediction"] == pytest.approx(fit.params[0])
    assert res["differential_prediction"] == pytest.approx(fit.params[1])
    assert res["differential_prediction_se"] == pytest.approx(fit.bse[1], rel=1e-6)
    assert res["differential_p_one_sided"] < 1e-4
    assert abs(res["differential_prediction"] - 1) < 0.3
    noise = calibration_test(Y, W, 0.5, m_hat, rng.normal(size=n), cl)
    assert noise["differential_p_one_sided"] > 0.01


def test_held_out_selection_chooses_on_earlier_folds():
    import pandas as pd

    from pipeline.estimate.inference import held_out_selection
    from pipeline.estimate.rate import RATEResult

    def res(ests, ses):
        return RATEResult(estimate=0.0, std_err=1.0, target="AUTOC", toc=pd.DataFrame(), n_boot=10,
                          fold_estimates=tuple(ests), fold_std_errs=tuple(ses))

    fr = {"AUTOC": {"a": res([1.0, 1.0, 0.0], [0.5, 0.5, 0.5]), "b": res([0.1, 0.1, 3.0], [0.5, 0.5, 0.5])}}
    sel = held_out_selection(fr, "AUTOC")
    assert sel["chosen"] == "a"  # b only looks good on the held-out fold, which selection never sees
    assert sel["held_out"]["estimate"] == 0.0 and sel["held_out"]["std_err"] == 0.5


def _null_design(r, n_clusters=80, k=5):
    """Unequal clusters (1-8 units), DR scores of pure noise (cluster effects included) and four rules of
    random priorities: no rule targets anything."""
    from pipeline.estimate.cate import make_folds

    rng = np.random.default_rng(r)
    clusters = np.repeat(np.arange(n_clusters), rng.integers(1, 9, n_clusters))
    folds = make_folds(clusters, k, r)
    scores = 2 * rng.normal(size=len(clusters)) + rng.normal(size=n_clusters)[clusters]
    scores[folds == 0] = np.nan
    prios = {name: rng.normal(size=n_clusters)[clusters] + 0.1 * rng.normal(size=len(clusters))
             for name in ("all", "a", "b", "c")}
    for p in prios.values():
        p[folds == 0] = np.nan
    return scores, prios, clusters, folds


def test_paired_comparator_is_chosen_on_earlier_folds_only():
    """Brute force: fold k's comparator is the argmax of the RATE Ratio over folds before k; the first
    evaluation fold is never tested; changing a tested fold's scores never changes its own comparator."""
    from pipeline.estimate.inference import paired_against_earlier_choice, sequential_rate

    scores, prios, clusters, folds = _null_design(3)
    singles = {k: prios[k] for k in "abc"}
    res = paired_against_earlier_choice(scores, prios["all"], singles, clusters, folds, targets=["AUTOC", "QINI"],
                                        n_boot=50, seed=4)
    per = {k: sequential_rate(scores, v, clusters, folds, n_boot=50, seed=4) for k, v in singles.items()}
    eval_folds = [1, 2, 3, 4]
    for j, f in enumerate(eval_folds):
        if j == 0:
            assert res["comparator_by_fold"][str(f)] is None
            continue
        ratios = {k: np.mean(r.fold_estimates[:j]) / (np.sqrt(np.sum(np.square(r.fold_std_errs[:j]))) / j)
                  for k, r in per.items()}
        assert res["comparator_by_fold"][str(f)] == max(ratios, key=ratios.get)
    assert res["folds_tested"] == [2, 3, 4] and len(res["AUTOC"].fold_estimates) == 3
    last = folds == 4
    changed = scores.copy()
    changed[last] += 5 * np.random.default_rng(0).normal(size=last.sum())
    res2 = paired_against_earlier_choice(changed, prios["all"], singles, clusters, folds, targets=["AUTOC"],
                                         n_boot=50, seed=4)
    assert res2["comparator_by_fold"] == res["comparator_by_fold"]
    one = paired_against_earlier_choice(np.where(folds == 1, scores, np.nan), prios["all"], singles, clusters,
                                        folds, targets=["AUTOC"], n_boot=50, seed=4)
    assert "note" in one and "AUTOC" not in one
    flat = {k: np.where(np.isfinite(v), 1.0, np.nan) for k, v in singles.items()}  # constant: no ratio
    none = paired_against_earlier_choice(scores, prios["all"], flat, clusters, folds, targets=["AUTOC"], n_boot=50,
                                         seed=4)
    assert "note" in none and "AUTOC" not in none


@pytest.mark.slow
def test_paired_test_is_calibrated_under_the_null_with_unequal_clusters():
    """400 null replications: the paired test against the comparator chosen on earlier folds rejects
    3-8 % at the 5 % level; choosing the comparator on the tested folds (the former rule) rejects more."""
    from pipeline.estimate.inference import paired_against_earlier_choice, sequential_rate

    new, old = [], []
    for r in range(400):
        scores, prios, clusters, folds = _null_design(r)
        singles = {k: prios[k] for k in "abc"}
        per = {k: sequential_rate(scores, v, clusters, folds, n_boot=100, seed=r) for k, v in singles.items()}
        res = paired_against_earlier_choice(scores, prios["all"], singles, clusters, folds, targets=["AUTOC"],
                                            n_boot=100, seed=r, candidate_results=per)
        new.append(res["AUTOC"].p_value() < 0.05)
        best = max(per, key=lambda k: per[k].ratio)
        same_data = sequential_rate(scores, np.column_stack([prios["all"], singles[best]]), clusters, folds,
                                    n_boot=100, seed=r)
        old.append(same_data.p_value() < 0.05)
    assert 0.03 <= np.mean(new) <= 0.08, np.mean(new)
    assert np.mean(old) > np.mean(new)


# --- best linear projection and sorted group effects (report) ----------------------------------------------

def test_blp_equals_clustered_ols():
    """Brute force: statsmodels' OLS with cluster-robust covariance (same CR1 corrections) on centred
    covariates gives the same coefficients and standard errors."""
    import statsmodels.api as sm

    from pipeline.estimate.inference import best_linear_projection

    rng = np.random.default_rng(0)
    X, cl = rng.normal(size=(300, 2)), np.repeat(np.arange(60), 5)
    y = 1 + X[:, 0] + rng.normal(size=300)
    terms = best_linear_projection(y, X, cl, names=["a", "b"])["terms"]
    ref = sm.OLS(y, sm.add_constant(X - X.mean(0))).fit(cov_type="cluster", cov_kwds={"groups": cl})
    np.testing.assert_allclose([t["estimate"] for t in terms], ref.params, rtol=1e-10)
    np.testing.assert_allclose([t["std_err"] for t in terms], ref.bse, rtol=1e-10)
    assert [t["term"] for t in terms] == ["(intercept)", "a", "b"]
    assert terms[0]["estimate"] == pytest.approx(y.mean())  # centred covariates: the intercept is the ATE


def test_blp_slope_test_is_calibrated_without_heterogeneity():
    """No heterogeneity (scores independent of the covariate, clustered noise): the slope's 5 % test rejects
    within [3 %, 8 %] of 400 replications."""
    from pipeline.estimate.inference import best_linear_projection

    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 9, 80)
    cl = np.repeat(np.arange(80), sizes)
    rejections = 0
    for _ in range(400):
        x = rng.normal(size=80)[cl] + rng.normal(size=len(cl))  # a covariate that varies by cluster
        y = 1.0 + rng.normal(size=80)[cl] + rng.normal(size=len(cl)) * 2
        rejections += best_linear_projection(y, x, cl)["terms"][1]["p_value"] < 0.05
    assert 0.03 <= rejections / 400 <= 0.08


def _gates_loop(scores, prio, cl, folds, k):
    out = {j: [] for j in range(k)}
    for f in np.unique(folds[np.isfinite(scores)]):
        m = (folds == f) & np.isfinite(scores)
        order = np.argsort(np.argsort(prio[m], kind="stable"), kind="stable")  # distinct priorities: ranks
        group = (order * k) // m.sum()
        for j in range(k):
            out[j].append(scores[m][group == j].mean())
    return [np.mean(out[j]) for j in range(k)]


def test_gates_brute_force_invariance_and_pinned_value():
    from pipeline.estimate.inference import sorted_group_effects

    rng = np.random.default_rng(2)
    n = 400
    folds, cl = np.repeat(np.arange(4), n // 4), np.arange(n) // 4
    prio = rng.normal(size=n)
    scores = 1 + prio + rng.normal(size=n) * 3
    scores[folds == 0] = np.nan  # fold 0 is never evaluated
    g = sorted_group_effects(scores, prio, cl, folds, 4)
    assert g["n_folds"] == 3 and [x["n"] for x in g["groups"]] == [75] * 4
    np.testing.assert_allclose([x["estimate"] for x in g["groups"]], _gates_loop(scores, prio, cl, folds, 4))
    again = sorted_group_effects(scores, np.exp(prio), cl, folds, 4)  # ranks only
    assert again == g
    assert g["groups"][3]["estimate"] == pytest.approx(1.905154, abs=1e-6)  # pinned


def test_gates_intervals_cover_the_ate_without_heterogeneity():
    """Random priorities: every group's 95 % interval covers the ATE in 92-98 % of 300 replications."""
    from pipeline.estimate.inference import sorted_group_effects

    rng = np.random.default_rng(3)
    cl = np.repeat(np.arange(120), 4)
    folds = (np.arange(120) % 4)[cl]
    cover = []
    for _ in range(300):
        scores = 0.5 + rng.normal(size=120)[cl] + rng.normal(size=len(cl))
        g = sorted_group_effects(scores, rng.normal(size=len(cl)), cl, folds, 4)["groups"]
        cover += [x["ci_low"] <= 0.5 <= x["ci_high"] for x in g]
    assert 0.92 <= np.mean(cover) <= 0.98


def test_gates_on_a_tiny_trial_skip_groups_of_one_cluster():
    """A fold whose quartile holds a single cluster gives no SE: that fold does not count for that group
    (it used to divide by zero inside the evaluate stage of a small study)."""
    from pipeline.estimate.inference import sorted_group_effects

    cl = np.repeat(np.arange(8), 5)
    folds = np.repeat([1, 1, 1, 1, 2, 2, 2, 2], 5)
    prio = np.repeat(np.arange(8.0), 5)  # priorities constant within clusters: each quartile is one cluster
    g = sorted_group_effects(np.arange(40.0), prio, cl, folds, 4)["groups"]
    assert all(np.isnan(x["estimate"]) and np.isnan(x["std_err"]) for x in g)
    assert cluster_mean_se(np.ones(3), np.zeros(3))[1] != cluster_mean_se(np.ones(3), np.zeros(3))[1]  # NaN


def _unequal_trial(rng, n_clusters=120, p=5, hetero=0.0):
    """Clusters of very unequal size (1 to 30 units, Uganda's locations hold 1-54), treatment by cluster."""
    from pipeline.estimate.inference import simulated_cluster_trial

    return simulated_cluster_trial(rng, n_clusters, p, hetero, size_p=0.12, max_size=30)


def _sequential_calibration(rng, r, hetero=0.0):
    from pipeline.estimate.cate import dr_scores, make_folds
    from pipeline.estimate.inference import sequential_calibration_test

    X, Y, W, clusters = _unequal_trial(rng, hetero=hetero)
    folds = make_folds(clusters, 5, seed=r)
    tau, m = _ridge_t_learner(X, Y, W, clusters, folds, "sequential")
    ok = np.isfinite(tau)
    scores = np.full(len(Y), np.nan)
    scores[ok] = dr_scores(Y[ok], W[ok], tau[ok], m[ok], 0.5)
    return sequential_calibration_test(scores, tau, clusters, folds), (X, Y, W, clusters, folds, tau, m)


def test_sequential_calibration_brute_force_per_fold_and_combined():
    sm = pytest.importorskip("statsmodels.api")
    res, (X, Y, W, clusters, folds, tau, m) = _sequential_calibration(np.random.default_rng(5), 0, hetero=1.0)
    from pipeline.estimate.cate import dr_scores

    ok = np.isfinite(tau)
    assert len(res["folds"]) == 4 and sorted({r["fold"] for r in res["folds"]}) == sorted(set(folds[ok]))
    for r in res["folds"]:
        f = (folds == r["fold"]) & ok
        gamma = dr_scores(Y[f], W[f], tau[f], m[f], 0.5)
        D = np.column_stack([np.full(f.sum(), tau[f].mean()), tau[f] - tau[f].mean()])
        fit = sm.OLS(gamma, D).fit()
        assert r["mean_prediction"] == pytest.approx(fit.params[0])
        assert r["differential_prediction"] == pytest.approx(fit.params[1])
        labels = np.unique(clusters[f])  # the cluster jackknife, refitting without each cluster
        loo = np.array([sm.OLS(gamma[clusters[f] != c], D[clusters[f] != c]).fit().params for c in labels])
        jk_se = np.sqrt((len(labels) - 1) / len(labels) * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
        assert r["mean_prediction_se"] == pytest.approx(jk_se[0], rel=1e-8)
        assert r["differential_prediction_se"] == pytest.approx(jk_se[1], rel=1e-8)
    slopes = [r["differential_prediction"] for r in res["folds"]]
    ses = [r["differential_prediction_se"] for r in res["folds"]]
    assert res["differential_prediction"] == pytest.approx(np.mean(slopes))
    assert res["differential_prediction_se"] == pytest.approx(np.sqrt(np.sum(np.square(ses))) / 4)
    # heterogeneity tau = 1 + x1 that a linear learner finds: a slope near 1, strongly significant
    assert res["differential_p_one_sided"] < 1e-3 and abs(res["differential_prediction"] - 1) < 0.35
    assert res["differential_prediction"] == pytest.approx(1.00552164834916, rel=1e-9)  # pinned


def test_sequential_calibration_skips_constant_folds_and_is_invariant_to_shifting_tau():
    from pipeline.estimate.inference import sequential_calibration_test

    rng = np.random.default_rng(6)
    n = 200
    folds = np.repeat(np.arange(4), 50)
    clusters = np.arange(n) // 2
    scores = rng.normal(size=n)
    tau = rng.normal(size=n)
    tau[folds == 1] = 0.7  # a fold with constant CATEs has no slope
    res = sequential_calibration_test(scores, tau, clusters, folds)
    assert [r["fold"] for r in res["folds"]] == [0, 2, 3]
    scaled = sequential_calibration_test(scores, 3 * tau, clusters, folds)
    assert scaled["differential_prediction"] == pytest.approx(res["differential_prediction"] / 3)
    assert scaled["differential_p_one_sided"] == pytest.approx(res["differential_p_one_sided"])
    empty = sequential_calibration_test(scores, np.full(n, 1.0), clusters, folds)
    assert empty["folds"] == [] and np.isnan(empty["differential_p_one_sided"])


def _calibration_rejections(reps, seed):
    from pipeline.estimate.inference import calibration_test

    rng = np.random.default_rng(seed)
    seq, pooled = 0, 0
    from pipeline.estimate.cate import make_folds

    for r in range(reps):
        res, (X, Y, W, clusters, folds, _tau, _m) = _sequential_calibration(rng, r)
        seq += res["differential_p_one_sided"] < 0.05
        tau_k, m_k = _ridge_t_learner(X, Y, W, clusters, make_folds(clusters, 5, seed=r), "kfold")
        pooled += calibration_test(Y, W, 0.5, m_k, tau_k, clusters)["differential_p_one_sided"] < 0.05
    return seq / reps, pooled / reps


def test_sequential_calibration_is_calibrated_under_the_null_with_unequal_clusters():
    """No heterogeneity, clusters of 1-30 units, a cross-fitted learner: the one-sided 5 % test rejects ~5 %."""
    seq, _ = _calibration_rejections(200, seed=21)
    assert 0.02 <= seq <= 0.09, seq


@pytest.mark.slow
def test_calibration_test_500_null_replications_sequential_calibrated_pooled_not():
    """500 null replications (clusters of 1-30 units): the sequential test's one-sided 5 % level holds; the
    pooled K-fold test is printed beside it (here conservative; on the Uganda design it rejected 11 %)."""
    seq, pooled = _calibration_rejections(500, seed=22)
    print(f"sequential {seq:.3f}, pooled K-fold {pooled:.3f}")
    assert 0.03 <= seq <= 0.07, seq


def _forest_null_replication(r: int, n_clusters: int = 80, se: str = "cr3"):
    """One null trial evaluated as the evaluate stage does, with the project's causal forests: two 'scales' of
    three features each and their join, nuisances fitted once per fold on the join and shared, sequential
    cross-fitting, clusters of 1-30 units. Returns the p-values of the single-set RATE test of the join, the
    paired test of the join against the single scale chosen on earlier folds, and the calibration test."""
    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import crossfit_cate, dr_scores, fit_nuisances, make_folds, training_splits
    from pipeline.estimate.inference import (
        paired_against_earlier_choice,
        sequential_calibration_test,
        sequential_rate,
    )

    rng = np.random.default_rng(1000 + r)
    sizes = np.minimum(rng.geometric(0.15, n_clusters), 30)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    n = len(clusters)
    Xa, Xb = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    W = np.repeat(rng.permutation(np.arange(n_clusters) % 2), sizes)
    Y = Xa[:, 0] + 0.5 * Xb[:, 0] + np.repeat(rng.normal(0, 0.5, n_clusters), sizes) + rng.normal(size=n) + W
    cfg = CateConfig(n_estimators=40, nuisance_trees=20, n_jobs=1, propensity=0.5)
    folds = make_folds(clusters, 5, seed=r, treatment=W)
    sets = {"a": Xa, "b": Xb, "all": np.hstack([Xa, Xb])}
    shared = fit_nuisances(sets["all"], Y, W, clusters, training_splits(folds, "sequential"), cfg, r)
    fits = {name: crossfit_cate(X, Y, W, clusters, folds, cfg, r + 7, with_outcome_model=name == "all",
                                scheme="sequential", nuisances=shared) for name, X in sets.items()}
    ref = fits["all"]
    ok = np.isfinite(ref.tau_hat)
    scores = np.full(n, np.nan)
    scores[ok] = dr_scores(Y[ok], W[ok], ref.tau_hat[ok], ref.m_hat[ok], ref.e_hat[ok])
    single = sequential_rate(scores, ref.tau_hat, clusters, folds, n_boot=200, seed=r).p_value()
    paired = paired_against_earlier_choice(scores, ref.tau_hat, {k: fits[k].tau_hat for k in ("a", "b")}, clusters,
                                           folds, targets=["AUTOC"], n_boot=200, seed=r)
    calib = sequential_calibration_test(scores, ref.tau_hat, clusters, folds, se=se)["differential_p_one_sided"]
    return single, paired["AUTOC"].p_value() if "AUTOC" in paired else float("nan"), calib


@pytest.mark.slow
def test_whole_evaluation_with_forests_is_calibrated_under_unequal_clusters():
    """400 null replications with the project's forests and clusters of 1-30 units (about 10 minutes on 2
    cores): the single-set RATE test, the paired test against the single scale chosen on earlier folds and the
    calibration test each reject within [3 %, 8 %] at the 5 % level (measured: 3.75 %, 4.25 %, 4.75 %)."""
    p = np.array([_forest_null_replication(r) for r in range(400)])
    rates = np.nanmean(p < 0.05, axis=0)
    print(f"rejection at 5 %: single-set RATE {rates[0]:.3f}, paired {rates[1]:.3f}, calibration {rates[2]:.3f}")
    assert np.isfinite(p).mean() > 0.95  # a paired test has no comparator only when no single scale has a ratio
    assert all(0.03 <= x <= 0.08 for x in rates), rates
