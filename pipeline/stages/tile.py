"""Stage `tile`: cut multi-scale chips (windows in metres) around every location."""

from __future__ import annotations

import sys
from pathlib import Path

from ..compute import dask_client
from ..imagery import resolve_scene_paths
from ..sites import resolve_data_root
from ..tiling import tile_study
from ._common import run_stage


def add_args(p):
    p.add_argument("--units", help="units GeoParquet (default: OUT/prepare/units.parquet)")
    p.add_argument("--scenes", nargs="+", help="scene files or globs (default: OUT/prepare/scenes/*.tif)")


def body(cfg, args) -> None:
    out = Path(args.out)
    units = args.units or out / "prepare" / "units.parquet"
    if args.scenes:
        scenes = resolve_scene_paths(args.scenes)
    elif cfg.data.scenes:  # a real study: scenes relative to its data folder
        root = resolve_data_root(cfg.data, Path(args.params).resolve().parent)
        scenes = resolve_scene_paths(cfg.data.scenes, base=root)
    else:  # the simulation
        scenes = resolve_scene_paths(["*.tif"], base=out / "prepare" / "scenes")
    with dask_client(cfg.compute) as client:
        manifest = tile_study(units, scenes, cfg.tile, out / "tile", client=client)
    print(f"tile: {manifest['location_id'].nunique()} locations x {manifest['scale'].nunique()} scales "
          f"-> {out / 'tile'}")


def main(argv=None) -> int:
    return run_stage("tile", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
