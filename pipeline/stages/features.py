"""Stage `features`: Multi-scale Concatenation of per-scale embeddings (plus covariates) per scale set."""

from __future__ import annotations

import sys
from pathlib import Path

from ..concat import build_features
from ._common import run_stage


def body(cfg, args) -> None:
    out = Path(args.out)
    sets = build_features(out / "prepare" / "units.parquet", out / "tile", out / "embed", cfg.features,
                          out / "features")
    print(f"features: {len(sets)} scale sets ({', '.join(sets)}) -> {out / 'features'}")


def main(argv=None) -> int:
    return run_stage("features", __doc__, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
