"""Stage `tile`: cut multi-scale chips (windows in metres) around every location."""

from __future__ import annotations

import sys
from pathlib import Path

from ..tiling import tile_study
from ._common import run_stage


def add_args(p):
    p.add_argument("--units", help="units GeoParquet (default: OUT/prepare/units.parquet)")
    p.add_argument("--scenes", nargs="+", help="scene files or globs (default: OUT/prepare/scenes/*.tif)")


def body(cfg, args) -> None:
    out = Path(args.out)
    units = args.units or out / "prepare" / "units.parquet"
    scenes = args.scenes or sorted(str(p) for p in (out / "prepare" / "scenes").glob("*.tif"))
    from ..imagery import resolve_scene_paths
    chips = tile_study(units, resolve_scene_paths(scenes), cfg.tile, out / "tile")
    print(f"tile: {len(chips.location_ids)} locations x {len(chips.chips)} scales -> {out / 'tile'}")


def main(argv=None) -> int:
    return run_stage("tile", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
