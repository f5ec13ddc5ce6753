"""Stage `cate`: Cross-fitted causal forests per scale set, out-of-fold CATEs and DR scores."""

from __future__ import annotations

import sys

from ..procedures import cate
from ._common import run_stage


def body(cfg, args) -> None:
    table = cate.run(cfg, args.out)
    print(f"cate: {table['set'].nunique()} scale sets x {table['unit_id'].nunique()} units -> {args.out}")


def main(argv=None) -> int:
    return run_stage("cate", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
