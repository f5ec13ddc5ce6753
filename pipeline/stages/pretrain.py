"""Stage `pretrain`: Self-supervised pretraining of encoders on chips at random positions of the scenes."""

from __future__ import annotations

import sys
from pathlib import Path

from ..imagery.scenes import resolve_scene_paths
from ..procedures import pretrain
from ._common import run_stage


def add_args(p):
    p.add_argument("--scenes", nargs="+", help="scene files or globs (default: data.scenes, or the simulation's)")


def body(cfg, args) -> None:
    cards = pretrain.run(cfg, args.out, Path(args.params).resolve().parent,
                         scene_paths=resolve_scene_paths(args.scenes) if args.scenes else None)
    if not cards:
        print("pretrain: no encoder listed under pretrain.encoders")
    for name, card in cards.items():
        t = card["training"]
        secs = card["timing"]["seconds"]
        print(f"pretrain: {name} ({card['method']}) {t['steps']} steps x {t['batch_size']} chips in {secs:.1f} s "
              f"on {t['device']}; loss {card['loss']['first10_mean']:.2f} -> {card['loss']['last10_mean']:.2f} "
              f"-> {args.out}")


def main(argv=None) -> int:
    return run_stage("pretrain", __doc__, body, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
