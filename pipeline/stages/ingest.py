"""Stage `ingest`: Read a real study's units file (params `data`), validate it, write units.parquet."""

from __future__ import annotations

import sys
from pathlib import Path

from ..procedures.prepare import ingest
from ._common import run_stage


def body(cfg, args) -> None:
    _, report = ingest(cfg, args.out, Path(args.params).resolve().parent)
    extra = "".join(f", {k}: {v}" for k, v in report.items() if k in ("dropped_missing_outcome", "imputed_covariates"))
    print(f"ingest: {report['n_units']} units at {report['n_locations']} locations{extra}")


def main(argv=None) -> int:
    return run_stage("ingest", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
