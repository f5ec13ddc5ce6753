"""Scaling strategies on the machine at hand: achieved FLOPs, activations and inference time of every
strategy at every FLOPs factor, and the fitted exponents of activations and time against FLOPs. Dollár,
Singh & Girshick (2021) found that on GPUs time tracks activations rather than FLOPs, so the strategies that
grow activations slowest (dWr, dwr) should also grow time slowest there.

    python benchmarks/scaling.py [--factors 1 2 4 8 16] [--batch 256] [--device auto] [--out DIR]

Time is measured as the embedding stage runs the encoder (bf16 autocast and channels-last on a GPU).
"""

from __future__ import annotations

import argparse
import tempfile

from pipeline.core.config import ScalingConfig
from pipeline.procedures.scaling import run_scaling_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", nargs="+", default=list(ScalingConfig.bases))
    ap.add_argument("--strategies", nargs="+", default=list(ScalingConfig.strategies))
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="folder for table.csv, metrics.json and the figures")
    args = ap.parse_args()
    cfg = ScalingConfig(bases=tuple(args.bases), strategies=tuple(args.strategies), factors=tuple(args.factors),
                        batch_size=args.batch, repeats=args.repeats, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        m = run_scaling_study(cfg, args.out or tmp, progress=False)
    print(f"device {m['device']}; batch {args.batch}; factors {args.factors}; median of {args.repeats} batches")
    print(f"{'base':22s} {'strategy':8s} {'acts~s^':>8s} {'theory':>7s} {'time~s^':>8s}")
    for base, per in m["exponents"].items():
        for st, e in per.items():
            print(f"{base:22s} {st:8s} {e['acts_vs_flops']:8.2f} {e['theory_acts']:7.2f} {e['time_vs_flops']:8.2f}")


if __name__ == "__main__":
    main()
