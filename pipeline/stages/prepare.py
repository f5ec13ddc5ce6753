"""Stage `prepare`: Simulate the default study's scene and units, and (separately) the true CATE."""

from __future__ import annotations

import sys

from ..procedures.prepare import prepare
from ._common import run_stage


def body(cfg, args) -> None:
    units = prepare(cfg, args.out)
    print(f"prepare: {len(units)} units at {units['location_id'].nunique()} locations -> {args.out}")


def main(argv=None) -> int:
    return run_stage("prepare", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
