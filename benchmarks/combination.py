"""Size and power of ways to combine the sequential scheme's fold RATEs into one test.

Sequential cross-fitting ranks evaluation fold k with a model fitted on folds before k, so the first
evaluation fold is ranked by a model fitted on a fifth of the clusters and its SE is larger than the later
folds'. This benchmark simulates village-randomized trials with clusters of very unequal size (1-54 units,
as Uganda's locations), cross-fits a cheap CATE learner (ridge T-learner and ridge outcome model, so that
hundreds of replications run in minutes), and compares four combinations of the same fold RATEs:

* ``mean``: the mean of the fold estimates, SE sqrt(sum s_k^2) / M (the evaluate stage's rule);
* ``training-size``: weights fixed before any fold is scored, proportional to the number of folds the
  fold's model was fitted on (1, 2, 3, 4), SE sqrt(sum w_k^2 s_k^2);
* ``tsum``: the sum of the fold t-statistics over sqrt(M) (each is N(0, 1) given the earlier folds);
* ``ivw``: the inverse-variance weighted mean, SE 1 / sqrt(sum 1 / s_k^2);
* ``burn-in``: the mean over the evaluation folds after the first (a longer burn-in).

Under no heterogeneity each should reject 5 % of the time (two-sided); under heterogeneity the better rule
rejects more often and has the larger mean ratio.

    python benchmarks/combination.py [--reps 200] [--clusters 120] [--hetero 0.25] [--covariates 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

RULES = ("mean", "training-size", "tsum", "ivw", "burn-in")


def simulate(rng, n_clusters: int, hetero: float, p: int = 5):
    """Village-randomized trial: cluster sizes 1-54 (geometric), half the clusters treated, tau = 1 + h x1."""
    from pipeline.estimate.inference import simulated_cluster_trial

    return simulated_cluster_trial(rng, n_clusters, p, hetero, size_p=0.15, max_size=54)


def sequential_scores(X, Y, W, folds):
    """Sequential CATEs (ridge T-learner) and DR scores: fold k from models fitted on folds before k."""
    from pipeline.estimate.cate import dr_scores
    from pipeline.estimate.inference import ridge_t_learner

    tau, m = ridge_t_learner(X, Y, W, folds, "sequential")
    ok = np.isfinite(tau)
    scores = np.full(len(Y), np.nan)
    scores[ok] = dr_scores(Y[ok], W[ok], tau[ok], m[ok], 0.5)
    return tau, scores


def combined_z(est: np.ndarray, se: np.ndarray) -> dict:
    """The z statistic of each rule from fold estimates and SEs (in fold order)."""
    m = len(est)
    ivw_w = 1.0 / se ** 2
    fixed = np.arange(1, m + 1) / np.sum(np.arange(1, m + 1))
    return {
        "mean": est.mean() / (np.sqrt(np.sum(se ** 2)) / m),
        "training-size": np.sum(fixed * est) / np.sqrt(np.sum(fixed ** 2 * se ** 2)),
        "tsum": np.sum(est / se) / np.sqrt(m),
        "ivw": np.sum(ivw_w * est) / np.sum(ivw_w) * np.sqrt(np.sum(ivw_w)),
        "burn-in": est[1:].mean() / (np.sqrt(np.sum(se[1:] ** 2)) / (m - 1)),
    }


def run(reps: int, n_clusters: int, hetero: float, seed: int, n_boot: int, p: int = 5) -> dict:
    from pipeline.estimate.cate import make_folds
    from pipeline.estimate.inference import sequential_rate

    rng = np.random.default_rng(seed)
    z = {r: [] for r in RULES}
    fold_se = []
    for r in range(reps):
        X, Y, W, clusters = simulate(rng, n_clusters, hetero, p)
        folds = make_folds(clusters, 5, seed=r)
        tau, scores = sequential_scores(X, Y, W, folds)
        res = sequential_rate(scores, tau, clusters, folds, n_boot=n_boot, seed=r)
        est, se = np.array(res.fold_estimates), np.array(res.fold_std_errs)
        fold_se.append(se / se[1:].mean())
        for rule, value in combined_z(est, se).items():
            z[rule].append(value)
    crit = stats.norm.ppf(0.975)
    out = {rule: {"reject": float(np.mean(np.abs(v) > crit)), "mean_z": float(np.mean(v))} for rule, v in z.items()}
    out["fold_se_ratio"] = np.mean(fold_se, axis=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=120)
    ap.add_argument("--hetero", type=float, default=0.25)
    ap.add_argument("--covariates", type=int, default=5, help="covariates (more: noisier early-fold models)")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    null = run(args.reps, args.clusters, 0.0, args.seed, args.n_boot, args.covariates)
    alt = run(args.reps, args.clusters, args.hetero, args.seed + 1, args.n_boot, args.covariates)
    mc = np.sqrt(0.05 * 0.95 / args.reps)
    print(f"{args.reps} replications per design, {args.clusters} clusters of 1-54 units, {args.covariates} "
          "covariates, 5 folds (4 evaluated), "
          f"AUTOC, {args.n_boot} half-sample bootstraps; {time.perf_counter() - t0:.0f} s")
    for name, res in (("no heterogeneity", null), ("heterogeneity", alt)):
        print(f"fold SEs relative to the mean of the later folds ({name}): "
              f"{', '.join(f'{x:.2f}' for x in res['fold_se_ratio'])}")
    print(f"\n| combination | rejection, no heterogeneity (MC SE {mc:.3f}) | rejection, tau = 1 + {args.hetero} x1 "
          f"| mean RATE Ratio, tau = 1 + {args.hetero} x1 |")
    print("|---|---|---|---|")
    for rule in RULES:
        print(f"| {rule} | {null[rule]['reject']:.3f} | {alt[rule]['reject']:.3f} | {alt[rule]['mean_z']:.2f} |")


if __name__ == "__main__":
    main()
