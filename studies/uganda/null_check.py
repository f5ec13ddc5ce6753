"""Null check of the Uganda study's RATE test: the treatment is re-randomized across locations (the clusters
of the design keep their size and the number of treated clusters; outcomes are kept, so there is no effect
and no heterogeneity), then the cate and evaluate stages run with the study's params on the study's own
features. A calibrated test gives RATE Ratios about N(0, 1).

Run from the repository root after ``dvc repro studies/uganda/dvc.yaml`` (about 70 s per replication on 2
cores):

    python studies/uganda/null_check.py --reps 12
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import geopandas as gpd

    from pipeline.core.config import load_config
    from pipeline.core.layout import StudyLayout
    from pipeline.procedures.cate import run_cate
    from pipeline.procedures.evaluate import evaluate_study

    cfg = load_config(HERE / "params.yaml")
    layout = StudyLayout(HERE / "out")
    units = gpd.read_parquet(layout.units)
    clusters = units["cluster_id"].astype(str)
    labels = np.unique(clusters)
    arms = units.groupby(clusters)["W"].mean().reindex(labels).round().to_numpy()
    rng = np.random.default_rng(args.seed)
    ratios = []
    for r in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            shuffled = units.copy()
            shuffled["W"] = clusters.map(dict(zip(labels, rng.permutation(arms)))).astype(int).to_numpy()
            shuffled.to_parquet(Path(tmp) / "units.parquet")
            run_cate(Path(tmp) / "units.parquet", layout.features.root, cfg.cate, cfg.seed + r, Path(tmp) / "cate",
                     progress=False)
            m = evaluate_study(Path(tmp) / "cate", cfg.evaluate, cfg.seed + r, Path(tmp) / "evaluate")
        ratios.append(m["sets"]["all"]["AUTOC"]["ratio"])
        print(f"replication {r}: " + " ".join(f"{k} {e['AUTOC']['ratio']:+.2f}" for k, e in m["sets"].items()),
              flush=True)
    ratios = np.asarray(ratios)
    print(f"all scales, AUTOC RATE Ratio over {len(ratios)} re-randomizations: mean {ratios.mean():+.2f}, "
          f"SD {ratios.std(ddof=1):.2f}, share above 1.96: {np.mean(ratios > 1.96):.2f}")


if __name__ == "__main__":
    main()
