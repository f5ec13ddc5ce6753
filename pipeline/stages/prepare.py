"""Stage `prepare`: simulate the default study's scene and units, and (separately) the true CATE."""

from __future__ import annotations

import sys
from pathlib import Path

from ..simulate import prepare_simulation
from ._common import run_stage


def body(cfg, args) -> None:
    out = Path(args.out)
    units = prepare_simulation(cfg.simulate, cfg.seed, out / "prepare", out / "truth.parquet")
    print(f"prepare: {len(units)} units at {units['location_id'].nunique()} locations -> {out / 'prepare'}")


def main(argv=None) -> int:
    return run_stage("prepare", __doc__, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
