"""Stage `evaluate`: RATE (AUTOC, QINI), RATE Ratio, paired tests, TOC table and figure, metrics.json."""

from __future__ import annotations

import sys

from ..procedures import evaluate
from ._common import run_stage


def body(cfg, args) -> None:
    m = evaluate.run(cfg, args.out)
    first = cfg.evaluate.targets[0]
    for name, e in m["sets"].items():
        extra = f"  corr(tau) {e['corr_true_tau']:.3f}" if "corr_true_tau" in e else ""
        print(f"evaluate: {name:>24s}  {first} {e[first]['estimate']:+.3f} (SE {e[first]['std_err']:.3f})"
              f"  ratio {e[first]['ratio']:+.2f}{extra}")


def main(argv=None) -> int:
    return run_stage("evaluate", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
