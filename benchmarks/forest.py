"""Forest speed: one fit + predict of our causal forest (explicit nuisance models, as configured by the
pipeline) against econml's ``CausalForestDML`` with default settings at the same number of trees, on the
same data, in one process; then the pipeline's full K-fold cross-fit. Wall and CPU seconds.

    python benchmarks/forest.py [--n 10000] [--p 20] [--trees 2000] [--folds 5]

Reference point (not run here): grf's causal_forest fits n = 10,000, p = 20, 2,000 trees in about 60 s wall
/ 117 s CPU on 2 cores of this kind of machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def single_fits(args, cfg, X, Y, W, clusters, make_learner, CausalForestDML) -> None:
    """One fit + predict of our configuration against econml's defaults at the same trees."""
    ours = make_learner(cfg, 0)
    _, w_ours, c_ours = timed(lambda: ours.fit(Y, W, X=X, groups=clusters).effect(X))
    default = CausalForestDML(discrete_treatment=True, n_estimators=args.trees, random_state=0)
    _, w_def, c_def = timed(lambda: default.fit(Y, W, X=X, groups=clusters).effect(X))
    print(f"  econml CausalForestDML defaults : {w_def:7.1f} s wall {c_def:7.1f} s CPU")
    print(f"  ours (one fit + predict)        : {w_ours:7.1f} s wall {c_ours:7.1f} s CPU   "
          f"speed ratio {w_def / w_ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--p", type=int, nargs="+", default=[20, 64])
    ap.add_argument("--trees", type=int, default=2000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--skip-crossfit", action="store_true")
    ap.add_argument("--crossfit-only", action="store_true", help="time only the pipeline's K-fold cross-fit")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from econml.dml import CausalForestDML

    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import crossfit_cate, make_folds, make_learner

    for p in args.p:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(args.n, p))
        W = rng.integers(0, 2, args.n)
        Y = X[:, 0] + W * (1 + np.maximum(X[:, 1], 0)) + rng.normal(size=args.n)
        clusters = np.arange(args.n) // 5
        cfg = CateConfig(n_estimators=args.trees, folds=args.folds, n_jobs=-1)
        print(f"n={args.n} p={p} trees={args.trees}")
        if not args.crossfit_only:
            single_fits(args, cfg, X, Y, W, clusters, make_learner, CausalForestDML)
        if not args.skip_crossfit:
            folds = make_folds(clusters, args.folds, 0)
            _, w_cf, c_cf = timed(lambda: crossfit_cate(X, Y, W, clusters, folds, cfg, 0, with_outcome_model=True))
            print(f"  ours, {args.folds}-fold cross-fit (all units): {w_cf:7.1f} s wall {c_cf:7.1f} s CPU")


if __name__ == "__main__":
    main()
