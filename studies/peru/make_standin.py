"""Write a SEMI-SYNTHETIC stand-in for the Peru graduation-programme files (Banerjee et al. 2015).

The real household file and village coordinates are not public with coordinates; this script writes files
with the schema the Peru study expects, with villages placed inside a real Landsat 8 clip of Madre de Dios,
Peru, so that the whole study runs end to end. Every number in the stand-in is simulated: nothing learned
from it says anything about Peru.

    python studies/peru/make_standin.py OUT_DIR [--scene PATH_TO_LC08_003069_20180906_clip.tif]

Writes ``OUT_DIR/households.dta`` (hhid, village_id, treatment "Control"/"Treatment", asset_index_bl,
asset_index_el, hh_size_bl, head_female_bl, head_age_bl) and ``OUT_DIR/villages.csv`` (village_id, lon, lat).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer

DEFAULT_SCENE = (Path(__file__).resolve().parents[3] / "shared" / "data" / "scikit_eo_landsat8"
                 / "LC08_003069_20180906_clip.tif")


def make_standin(out_dir: str | Path, scene: str | Path = DEFAULT_SCENE, n_villages: int = 40,
                 households: tuple[int, int] = (6, 14), seed: int = 2015) -> dict[str, Path]:
    """Write the stand-in files; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with rasterio.open(scene) as ds:
        b, crs = ds.bounds, ds.crs
    margin = 300.0
    xs = rng.uniform(b.left + margin, b.right - margin, n_villages)
    ys = rng.uniform(b.bottom + margin, b.top - margin, n_villages)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    villages = pd.DataFrame({"village_id": np.arange(1, n_villages + 1), "lon": lon, "lat": lat})
    treated_villages = rng.permutation(n_villages)[: n_villages // 2] + 1
    rows = []
    hh = 0
    for v in villages["village_id"]:
        for _ in range(rng.integers(households[0], households[1] + 1)):
            hh += 1
            w = int(v in treated_villages)
            size = int(rng.poisson(4) + 1)
            female = int(rng.random() < 0.3)
            base = rng.normal(0, 1) + 0.1 * size
            effect = 0.3 + 0.2 * female  # simulated
            rows.append({"hhid": hh, "village_id": v, "treatment": "Treatment" if w else "Control",
                         "asset_index_bl": base, "asset_index_el": base + 0.1 + w * effect + rng.normal(0, 0.7),
                         "hh_size_bl": size, "head_female_bl": female, "head_age_bl": int(rng.integers(20, 70))})
    hh_df = pd.DataFrame(rows)
    hh_df.loc[rng.choice(len(hh_df), 3, replace=False), "asset_index_el"] = np.nan  # attrition
    paths = {"households": out / "households.dta", "villages": out / "villages.csv"}
    hh_df.to_stata(paths["households"], write_index=False)
    villages.to_csv(paths["villages"], index=False)
    (out / "SEMI_SYNTHETIC.txt").write_text(
        "Semi-synthetic stand-in for the Peru graduation-programme files: simulated households placed in a\n"
        "real Landsat 8 clip. Not data about Peru.\n")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--scene", default=str(DEFAULT_SCENE))
    args = ap.parse_args()
    paths = make_standin(args.out_dir, args.scene)
    print(f"semi-synthetic stand-in written: {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
