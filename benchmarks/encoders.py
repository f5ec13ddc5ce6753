"""Encoder table of a study that has run (default: the default study, after ``dvc repro``): for each choice
of ``features.encoders`` (spectral statistics, random convolutional features, both), the features, cate and
evaluate stages on the study's own chips, folds and params; per scale set the AUTOC RATE Ratio, corr(tau hat,
tau) where the truth is known, and the paired test of each encoder choice against ``spectral`` on the same
folds and bootstrap draws (both priorities scored with the spectral run's sequential DR scores).

    python benchmarks/encoders.py [--study-out out --params params.yaml] [--choices spectral rcf spectral+rcf]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study-out", type=Path, default=Path("out"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--choices", nargs="+", default=["spectral", "rcf", "spectral+rcf"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pipeline.core.config import load_config
    from pipeline.core.layout import StudyLayout
    from pipeline.estimate.inference import sequential_rate
    from pipeline.procedures.cate import run_cate
    from pipeline.procedures.embed import embed_study
    from pipeline.procedures.evaluate import evaluate_study
    from pipeline.procedures.features import build_features

    layout = StudyLayout(args.study_out)
    if not layout.tile.manifest.is_file():
        print(f"no chip store at {layout.tile.root}: run the study first (dvc repro)")
        return
    cfg = load_config(args.params)
    encoders = sorted({e for c in args.choices for e in c.split("+")})
    truth = layout.truth if layout.truth.exists() else None
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        embed_dir = Path(tmp) / "embed"
        t0 = time.perf_counter()
        embed_study(layout.tile.root, dataclasses.replace(cfg.embed, encoders=tuple(encoders)), cfg.seed, embed_dir,
                    progress=False)
        print(f"embedding ({', '.join(encoders)}): {time.perf_counter() - t0:.1f} s")
        for choice in args.choices:
            feat_cfg = dataclasses.replace(cfg.features, encoders=tuple(choice.split("+")))
            base = Path(tmp) / choice
            t0 = time.perf_counter()
            build_features(layout.units, layout.tile.root, embed_dir, feat_cfg, base / "features")
            run_cate(layout.units, base / "features", cfg.cate, cfg.seed, base / "cate", progress=False)
            m = evaluate_study(base / "cate", cfg.evaluate, cfg.seed, base / "evaluate", truth)
            runs[choice] = (m, pd.read_parquet(base / "cate" / "cate.parquet"),
                            pd.read_parquet(base / "cate" / "dr.parquet"))
            print(f"{choice}: features + cate + evaluate {time.perf_counter() - t0:.1f} s", flush=True)
    ref = runs.get("spectral")
    target = cfg.evaluate.targets[0]
    q = np.linspace(1.0 / cfg.evaluate.q_grid, 1.0, cfg.evaluate.q_grid)
    print(f"\n| encoders | scale set | {target} RATE Ratio | corr(tau hat, tau) | paired vs spectral: diff (SE), p |")
    print("|---|---|---|---|---|")
    for choice, (m, table, dr) in runs.items():
        for name, e in m["sets"].items():
            paired = ""
            if ref is not None and choice != "spectral":
                ref_table, ref_dr = ref[1], ref[2]
                prio = np.column_stack([
                    t[t["set"] == name].set_index("unit_id").reindex(ref_dr["unit_id"])["priority_seq"].to_numpy()
                    for t in (table, ref_table)])
                res = sequential_rate(ref_dr["dr_score_seq"].to_numpy(), prio, ref_dr["cluster_id"].to_numpy(),
                                      ref_dr["fold"].to_numpy(), target=target, q=q, n_boot=cfg.evaluate.n_boot,
                                      seed=cfg.seed)
                paired = f"{res.estimate:+.3f} ({res.std_err:.3f}), p = {res.p_value():.3f}"
            corr = f"{e['corr_true_tau']:.2f}" if "corr_true_tau" in e else ""
            print(f"| {choice} | {name} | {e[target]['ratio']:.2f} | {corr} | {paired} |")


if __name__ == "__main__":
    main()
