"""Stage `features`: Multi-scale Concatenation of per-scale embeddings (plus covariates) per scale set."""

from __future__ import annotations

import sys

from ..procedures import features
from ._common import run_stage


def body(cfg, args) -> None:
    sets = features.run(cfg, args.out)
    print(f"features: {len(sets)} scale sets ({', '.join(sets)}) -> {args.out}")


def main(argv=None) -> int:
    return run_stage("features", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
