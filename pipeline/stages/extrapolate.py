"""Stage `extrapolate`: CATE at locations without units, from the scales available there (labelled)."""

from __future__ import annotations

import sys

from ..procedures import extrapolate
from ._common import run_stage


def add_args(p):
    p.add_argument("--locations", required=True, help="GeoParquet of new locations (location_id, point geometry)")
    p.add_argument("--scenes", required=True, nargs="+", help="rasters covering the new locations (files/globs)")


def body(cfg, args) -> None:
    res = extrapolate.run(cfg, args.out, args.locations, args.scenes)
    n = int((res["kind"] == "extrapolation").sum())
    print(f"extrapolate: CATE predicted at {n} locations without units -> {args.out}")


def main(argv=None) -> int:
    return run_stage("extrapolate", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
