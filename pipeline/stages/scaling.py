"""Stage `scaling`: Grow encoders by every scaling strategy; count FLOPs/params/activations, time them."""

from __future__ import annotations

import sys

from ..procedures import scaling
from ._common import run_stage


def body(cfg, args) -> None:
    m = scaling.run(cfg, args.out)
    for base, per in m["exponents"].items():
        for st, e in per.items():
            t = f"  time {e['time_vs_flops']:.2f}" if "time_vs_flops" in e else ""
            print(f"scaling: {base:>20s} {st:>4s}  activations ~ FLOPs^{e['acts_vs_flops']:.2f} "
                  f"(theory {e['theory_acts']:.2f}){t}")


def main(argv=None) -> int:
    return run_stage("scaling", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
