"""Write the 991 non-experimental Uganda windows (64 px, 14.25 m) as small GeoTIFF scenes, with a table of
their locations, for the study's extrapolation stage.

The windows come as arrays (``nonexperimental_chips_64px.npz``: images, keys, the window's offset in its
351-px chip); ``chip_index.csv`` gives each key's chip origin (``ulx``, ``uly``), UTM EPSG code and
lon/lat. The georeference is the data packager's inferred one (see the data README).

    python nonexperimental.py --params params.yaml --out out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin

from pipeline.core.config import load_config
from pipeline.core.units import resolve_data_root

PIXEL_M = 14.25


def write_windows(root: Path, out: Path) -> int:
    z = np.load(root / "nonexperimental_chips_64px.npz")
    index = pd.read_csv(root / "chip_index.csv").set_index("key")
    scenes = out / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    rows = []
    for img, key, (r0, c0) in zip(z["images"], z["keys"], z["crop_row0_col0"]):
        info = index.loc[int(key)]
        transform = from_origin(info["ulx"] + c0 * PIXEL_M, info["uly"] - r0 * PIXEL_M, PIXEL_M, PIXEL_M)
        with rasterio.open(scenes / f"NonExp{int(key)}.tif", "w", driver="GTiff", width=img.shape[1],
                           height=img.shape[0], count=3, dtype="uint8", crs=f"EPSG:{int(info['utm_epsg'])}",
                           transform=transform) as ds:
            ds.write(np.moveaxis(img, -1, 0))
        rows.append({"location_id": f"nonexp-{int(key)}", "lon": info["geo_long"], "lat": info["geo_lat"]})
    df = pd.DataFrame(rows)
    gpd.GeoDataFrame(df[["location_id"]], geometry=gpd.points_from_xy(df["lon"], df["lat"]), crs=4326).to_parquet(
        out / "locations.parquet", index=False)
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    cfg = load_config(args.params)
    root = resolve_data_root(cfg.data, Path(args.params).resolve().parent)
    n = write_windows(root, Path(args.out) / "nonexp")
    print(f"nonexperimental: {n} windows written to {Path(args.out) / 'nonexp'}")


if __name__ == "__main__":
    main()
