"""Stage `ingest`: read a real study's units file (params `data`), validate it, write units.parquet."""

from __future__ import annotations

import sys
from pathlib import Path

from ..artifacts import write_json
from ..sites import load_study_units, write_units
from ._common import run_stage


def body(cfg, args) -> None:
    out = Path(args.out)
    units, report = load_study_units(cfg.data, Path(args.params).resolve().parent)
    write_units(units, out / "prepare" / "units.parquet")
    write_json(out / "prepare" / "ingest.json", report)
    extra = "".join(f", {k}: {v}" for k, v in report.items() if k in ("dropped_missing_outcome", "imputed_covariates"))
    print(f"ingest: {report['n_units']} units at {report['n_locations']} locations{extra}")


def main(argv=None) -> int:
    return run_stage("ingest", __doc__, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
