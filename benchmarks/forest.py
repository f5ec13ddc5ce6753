"""Forest speed, in one process: one fit + predict of our causal forest (explicit nuisance models and grf's
split defaults, as the pipeline configures it) against econml's ``CausalForestDML`` with its own defaults at
the same number of trees, on the same data; the pipeline's full K-fold cross-fit; how time and peak memory
grow with n; and the default study's cate and evaluate stage times. Wall and CPU seconds.

    python benchmarks/forest.py [--n 10000] [--p 20] [--trees 2000] [--folds 5]
    python benchmarks/forest.py --n 10000,30000,100000 --skip-crossfit --skip-defaults   # the growth table
    python benchmarks/forest.py --stages-only [--study-out out --params params.yaml]   # after dvc repro

With several n, econml's defaults run at the first n only. Peak memory is the resident memory of this
process sampled every 0.1 s during the fit (the data included). Reference point (not run here): grf's
causal_forest fits n = 10,000, p = 20, 2,000 trees in about 60 s wall / 117 s CPU on 2 cores of this kind
of machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 0.1 s)."""

    def __init__(self):
        import psutil

        self.proc, self.peak = psutil.Process(), 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.1)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as mem:
        out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0, mem.peak


def data(n: int, p: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, p))
    W = rng.integers(0, 2, n)
    Y = X[:, 0] + W * (1 + np.maximum(X[:, 1], 0)) + rng.normal(size=n)
    return X, Y, W, np.arange(n) // 5


def single_fits(n: int, p: int, args, with_defaults: bool) -> None:
    """One fit + predict of our configuration (and of econml's defaults at the same trees)."""
    from econml.dml import CausalForestDML

    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import make_learner, mtry_features

    X, Y, W, clusters = data(n, p)
    cfg = CateConfig(n_estimators=args.trees, n_jobs=-1)
    ours = make_learner(cfg, 0)
    _, w_ours, c_ours, m_ours = timed(lambda: ours.fit(Y, W, X=X, groups=clusters).effect_interval(X))
    line = (f"  ours (one fit + predict, mtry {mtry_features(cfg.mtry, p)} of {p}): {w_ours:7.1f} s wall "
            f"{c_ours:7.1f} s CPU  peak RSS {m_ours / 2 ** 30:5.2f} GiB")
    if with_defaults:
        default = CausalForestDML(discrete_treatment=True, n_estimators=args.trees, random_state=0)
        _, w_def, c_def, m_def = timed(lambda: default.fit(Y, W, X=X, groups=clusters).effect_interval(X))
        print(f"  econml CausalForestDML defaults       : {w_def:7.1f} s wall {c_def:7.1f} s CPU  "
              f"peak RSS {m_def / 2 ** 30:5.2f} GiB")
        line += f"   speed ratio {w_def / w_ours:.2f}x"
    print(line, flush=True)


def crossfit(n: int, p: int, args) -> None:
    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import crossfit_cate, make_folds

    X, Y, W, clusters = data(n, p)
    cfg = CateConfig(n_estimators=args.trees, folds=args.folds, n_jobs=-1)
    folds = make_folds(clusters, args.folds, 0)
    _, w_cf, c_cf, _ = timed(lambda: crossfit_cate(X, Y, W, clusters, folds, cfg, 0, with_outcome_model=True))
    print(f"  ours, {args.folds}-fold cross-fit (all units): {w_cf:7.1f} s wall {c_cf:7.1f} s CPU", flush=True)


def stage_times(study_out: Path, params: Path, slow_baseline: bool = False) -> None:
    """The cate and evaluate stages of a study that has run, in one process: with its params, with econml's
    forest instead of the compiled one, and (``slow_baseline``) also without grf's mtry and the shared
    nuisances (every feature tried per split, nuisances refitted per scale set)."""
    from pipeline.core.config import load_config
    from pipeline.core.layout import StudyLayout
    from pipeline.procedures.cate import run_cate
    from pipeline.procedures.evaluate import evaluate_study

    layout = StudyLayout(study_out)
    if not layout.features.index.is_file():
        print(f"stages: no features at {layout.features.root}; run the study first (dvc repro)")
        return
    cfg = load_config(params)
    truth = layout.truth if layout.truth.exists() else None
    variants = {"params": cfg.cate, "econml forest": dataclasses.replace(cfg.cate, forest="econml")}
    if slow_baseline:
        variants["econml, no grf mtry/sharing"] = dataclasses.replace(cfg.cate, forest="econml", mtry="all",
                                                                     shared_nuisance=False)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cate_cfg in variants.items():
            cate_dir, eval_dir = Path(tmp) / f"cate-{name}", Path(tmp) / f"eval-{name}"
            t0 = time.perf_counter()
            run_cate(layout.units, layout.features.root, cate_cfg, cfg.seed, cate_dir, progress=False)
            t1 = time.perf_counter()
            m = evaluate_study(cate_dir, cfg.evaluate, cfg.seed, eval_dir, truth)
            t2 = time.perf_counter()
            ref = m["sets"].get(cfg.evaluate.reference_set, {})
            first = cfg.evaluate.targets[0]
            extra = (f", coverage {ref['interval_coverage']:.3f}, corr(tau) {ref['corr_true_tau']:.3f}"
                     if "interval_coverage" in ref else "")
            times[name] = t2 - t0
            print(f"  {name:>28s}: cate {t1 - t0:6.1f} s + evaluate {t2 - t1:5.1f} s = {t2 - t0:6.1f} s; "
                  f"{cfg.evaluate.reference_set}: {first} ratio {ref[first]['ratio']:.2f}{extra}", flush=True)
    for name, t in times.items():
        if name != "params":
            print(f"  params vs {name}: {t / times['params']:.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000", help="units, or a comma-separated list (growth table)")
    ap.add_argument("--p", type=int, nargs="+", default=[20])
    ap.add_argument("--trees", type=int, default=2000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--skip-crossfit", action="store_true")
    ap.add_argument("--skip-defaults", action="store_true", help="do not time econml's defaults")
    ap.add_argument("--crossfit-only", action="store_true", help="time only the pipeline's K-fold cross-fit")
    ap.add_argument("--stages-only", action="store_true", help="time only a study's cate and evaluate stages")
    ap.add_argument("--slow-baseline", action="store_true",
                    help="with --stages-only: also econml's forest without grf's mtry and shared nuisances (minutes)")
    ap.add_argument("--study-out", type=Path, default=Path("out"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.stages_only:
        print(f"study stages ({args.study_out}, {args.params}):")
        stage_times(args.study_out, args.params, args.slow_baseline)
        return
    ns = [int(v) for v in args.n.split(",")]
    for p in args.p:
        for i, n in enumerate(ns):
            print(f"n={n} p={p} trees={args.trees}", flush=True)
            if not args.crossfit_only:
                single_fits(n, p, args, with_defaults=i == 0 and not args.skip_defaults)
            if not args.skip_crossfit:
                crossfit(n, p, args)


if __name__ == "__main__":
    main()
