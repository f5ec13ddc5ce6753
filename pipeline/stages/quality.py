"""Stage `quality`: Pretrain every scaled encoder with equal images seen; linear-probe error against FLOPs and time."""

from __future__ import annotations

import sys

from ..procedures import quality
from ._common import run_stage


def body(cfg, args) -> None:
    m = quality.run(cfg, args.out)
    for base, v in m["verdict"].items():
        times = ", ".join(f"{st} {'not reached' if t is None else f'{t:.1f} s'}"
                          for st, t in v["seconds_to_target"].items())
        print(f"quality: {base}: target error {v['target_error']:.3f} (base {v['base_error']:.3f}); "
              f"pretraining time to reach it: {times}; fastest: {v['fastest']}")


def main(argv=None) -> int:
    return run_stage("quality", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
