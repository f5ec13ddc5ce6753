"""Coverage and accuracy of the cross-fitted CATEs with and without the linear correction.

Uses the default study's all-scales features and design (run `dvc repro` first): its own outcomes, and
outcomes rebuilt from the same features with a quadratic or a step-like effect. For each true effect and
each `cate.linear_correction` (none, ridge, auto) and each forest builder (`cate.forest`: compiled, the
default, and econml's CausalForest, the reference): the share of units whose 95 % interval covers the true
effect, the mean squared error and the correlation with the truth, and the final stages `auto` chose.

    python benchmarks/intervals.py [--study .] [--set all] [--trees 200] [--forests compiled,econml]
        [--corrections none,ridge,auto]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=".", help="a study folder after `dvc repro` (out/ inside)")
    ap.add_argument("--set", default="all")
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--forests", default="compiled,econml")
    ap.add_argument("--corrections", default="none,ridge,auto")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import crossfit_cate, make_folds

    out = Path(args.study) / "out"
    X = np.load(out / "features" / f"{args.set}.npy")
    units = pd.read_parquet(out / "prepare" / "units.parquet").merge(pd.read_parquet(out / "truth.parquet"),
                                                                      on="unit_id")
    W = units["W"].to_numpy(int)
    clusters = units["cluster_id"].to_numpy()
    Z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=len(W))
    effects = {
        "study (smooth)": (units["tau"].to_numpy(), units["Y"].to_numpy(float)),
        "quadratic": (1.0 + 0.6 * Z[:, 0] ** 2 - 0.6, None),
        "steps": (1.0 + 1.5 * (Z[:, 0] > 0) - 1.0 * (Z[:, 40 % X.shape[1]] > 0.5), None),
    }
    folds = make_folds(clusters, args.folds, 0)
    print(f"{args.set}: {len(W)} units, {len(np.unique(clusters))} clusters, {X.shape[1]} features, "
          f"{args.trees} trees, {args.folds} folds")
    print(f"{'true effect':16s} {'forest':9s} {'correction':10s} {'coverage':>8s} {'MSE':>7s} {'corr':>6s} "
          f"{'time':>6s}  chosen")
    for name, (tau, Y) in effects.items():
        if Y is None:
            Y = 0.5 * Z[:, 3] + W * tau + noise
        for forest, mode in [(f, m) for m in args.corrections.split(",") for f in args.forests.split(",")]:
            cfg = CateConfig(n_estimators=args.trees, folds=args.folds, linear_correction=mode, forest=forest)
            t0 = time.perf_counter()
            r = crossfit_cate(X, Y, W, clusters, folds, cfg, 0)
            dt = time.perf_counter() - t0
            cov = np.mean((r.lower <= tau) & (tau <= r.upper))
            mse = np.mean((r.tau_hat - tau) ** 2)
            chosen = "".join(v[0] for v in r.corrections.values()) if mode == "auto" else ""
            print(f"{name:16s} {forest:9s} {mode:10s} {cov:8.3f} {mse:7.3f} {np.corrcoef(r.tau_hat, tau)[0, 1]:6.3f} "
                  f"{dt:5.0f}s  {chosen}")


if __name__ == "__main__":
    main()
