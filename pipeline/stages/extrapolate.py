"""Stage `extrapolate`: CATE at locations without units, from the scales available there (labelled)."""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd

from ..extrapolate import extrapolate_cate
from ..imagery import resolve_scene_paths
from ._common import run_stage


def add_args(p):
    p.add_argument("--locations", required=True, help="GeoParquet of new locations (location_id, point geometry)")
    p.add_argument("--scenes", required=True, nargs="+", help="rasters covering the new locations (files/globs)")


def body(cfg, args) -> None:
    from ..errors import UnitsError

    out = Path(args.out)
    if not Path(args.locations).is_file():
        raise UnitsError(args.locations, "a GeoParquet of new locations", "no such file", "run the step that writes it")
    locs = gpd.read_parquet(args.locations)
    res = extrapolate_cate(out, cfg, locs, resolve_scene_paths(args.scenes), out / "extrapolate")
    n = int((res["kind"] == "extrapolation").sum())
    print(f"extrapolate: CATE predicted at {n} locations without units -> {out / 'extrapolate'}")


def main(argv=None) -> int:
    return run_stage("extrapolate", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
