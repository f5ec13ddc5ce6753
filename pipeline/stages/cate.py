"""Stage `cate`: cross-fitted causal forests per scale set, out-of-fold CATEs and DR scores."""

from __future__ import annotations

import sys
from pathlib import Path

from ..cate import run_cate
from ._common import run_stage


def body(cfg, args) -> None:
    out = Path(args.out)
    table = run_cate(out / "prepare" / "units.parquet", out / "features", cfg.cate, cfg.seed, out / "cate")
    print(f"cate: {table['set'].nunique()} scale sets x {table['unit_id'].nunique()} units -> {out / 'cate'}")


def main(argv=None) -> int:
    return run_stage("cate", __doc__, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
