"""The texture design (``simulate.design: texture``): build it, then check what each encoder can see.

Writes a study folder (default ``out_texture/`` at the repository root, ignored by git) whose params are the
default study's with ``simulate.design: texture`` (every encoder of the default study embedded), runs its
prepare, tile, pretrain and embed stages, and prints the cross-validated R^2 (5 folds over villages, ridge
with its penalty chosen inside each training fold) of each effect modifier from each encoder's features at
each scale: spectral statistics should explain neither modifier (equal shares by construction); encoders
that see texture should.

    python studies/simulation/texture_check.py [--folder out_texture]
    python benchmarks/encoders.py --study-out out_texture/out --params out_texture/params.yaml   # the RATE table
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]


def cv_r2(X: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Out-of-fold R^2 of a standardised ridge regression (penalty by inner CV), 5 folds."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    pred = cross_val_predict(model, X, y, cv=KFold(5, shuffle=True, random_state=seed))
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=REPO / "out_texture")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import pandas as pd

    import pipeline as mc
    from pipeline.core.layout import StudyLayout
    from pipeline.procedures.features import unit_features_by_scale

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"]["design"] = "texture"
    study = mc.Study(args.folder, params=params)
    for stage in ("prepare", "tile", "pretrain", "embed"):
        getattr(study, stage)()
    layout = StudyLayout(study.out)
    truth = pd.read_parquet(layout.truth).drop_duplicates("location_id").set_index("location_id")
    print("cross-validated R^2 of each modifier (villages), by encoder and scale:")
    print("| encoder | scale | f_fine (arrangement) | f_coarse (strip orientation) |")
    print("|---|---|---|---|")
    for encoder in study.config.embed.encoders:
        units, by_scale, _ = unit_features_by_scale(layout.units, layout.tile.root, layout.embed.root,
                                                    study.config.features, encoder)
        first = ~units["location_id"].duplicated().to_numpy()
        locs = units.loc[first, "location_id"].to_numpy()
        blocks = {**{s: a[first] for s, a in by_scale.items()},
                  "all": np.hstack([a[first] for a in by_scale.values()])}
        for scale, X in blocks.items():
            r2 = [cv_r2(X, truth.loc[locs, f].to_numpy()) for f in ("f_fine", "f_coarse")]
            print(f"| {encoder} | {scale} | {r2[0]:.2f} | {r2[1]:.2f} |")


if __name__ == "__main__":
    main()
