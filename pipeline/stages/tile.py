"""Stage `tile`: Cut multi-scale chips (windows in metres) around every location."""

from __future__ import annotations

import sys
from pathlib import Path

from ..imagery.scenes import resolve_scene_paths
from ..procedures import tile
from ._common import run_stage


def add_args(p):
    p.add_argument("--units", help="units GeoParquet (default: the study's prepared units)")
    p.add_argument("--scenes", nargs="+", help="scene files or globs (default: data.scenes, or the simulation's)")


def body(cfg, args) -> None:
    manifest = tile.run(cfg, args.out, Path(args.params).resolve().parent, units_path=args.units,
                        scene_paths=resolve_scene_paths(args.scenes) if args.scenes else None)
    print(f"tile: {manifest['location_id'].nunique()} locations x {manifest['scale'].nunique()} scales "
          f"-> {args.out}")


def main(argv=None) -> int:
    return run_stage("tile", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
