"""Stage `embed`: Encode every scale's chips with every configured encoder."""

from __future__ import annotations

import sys
from pathlib import Path

from ..procedures import embed
from ._common import run_stage


def body(cfg, args) -> None:
    embs = embed.run(cfg, args.out, params_dir=Path(args.params).resolve().parent)
    print(f"embed: {len(embs)} (encoder, scale) embeddings -> {args.out}")


def main(argv=None) -> int:
    return run_stage("embed", __doc__, body, None, argv)


if __name__ == "__main__":
    sys.exit(main())
