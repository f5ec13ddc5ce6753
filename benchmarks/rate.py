"""RATE speed: n units, B half-sample bootstrap replicates over K clusters.

Prints the wall time of ``pipeline.estimate.rate.rate`` (after one warm-up call that compiles the kernel) and of a
plain per-replicate loop that, like grf's ``estimate_rate``, gathers each half sample and re-sorts it,
with the ratio of the two, measured in the same process. Not run by the test suite.

    python benchmarks/rate.py [--n 100000] [--boot 200] [--clusters 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.estimate.rate import _toc_stat, half_sample_draws, rate


def plain_loop(dr, prio, clusters, n_boot, seed, q):
    """Per replicate: gather the drawn clusters' units, sort them by priority, compute RATE (AUTOC)."""
    labels, cl = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(cl == k) for k in range(len(labels))]
    chosen = half_sample_draws(len(labels), n_boot, seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([members[k] for k in np.flatnonzero(chosen[b])])
        order = np.argsort(-prio[idx], kind="stable")
        sel = idx[order]
        stats[b] = _toc_stat(dr[sel], np.ones(len(sel)), q, "AUTOC")[0]
    return stats.std(ddof=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dr = rng.normal(size=args.n)
    prio = rng.normal(size=args.n)
    clusters = rng.integers(0, args.clusters, args.n)
    q = np.linspace(0.1, 1.0, 10)

    t0 = time.perf_counter()
    rate(dr, prio, clusters=clusters, n_boot=args.boot, seed=1)
    first = time.perf_counter() - t0
    ours = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = rate(dr, prio, clusters=clusters, n_boot=args.boot, seed=1)
        ours.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    se_loop = plain_loop(dr, prio, clusters, args.boot, 1, q)
    loop = time.perf_counter() - t0
    best = min(ours)
    print(f"n={args.n} boot={args.boot} clusters={args.clusters}")
    print(f"pipeline.estimate.rate.rate      : {best:.3f} s (median {np.median(ours):.3f} s; first call incl. "
          f"compilation {first:.2f} s)  SE {res.std_err:.6g}")
    print(f"plain re-sorting loop   : {loop:.3f} s  SE {se_loop:.6g}")
    print(f"speed-up vs plain loop  : {loop / best:.1f}x")


if __name__ == "__main__":
    main()
