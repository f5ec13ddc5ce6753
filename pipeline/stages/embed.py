"""Stage `embed`: encode every scale's chips with every configured encoder."""

from __future__ import annotations

import sys
from pathlib import Path

from ..compute import dask_client
from ..embedding import embed_study
from ._common import run_stage


def body(cfg, args) -> None:
    out = Path(args.out)
    with dask_client(cfg.compute) as client:
        embs = embed_study(out / "tile", cfg.embed, cfg.seed, out / "embed", client=client)
    print(f"embed: {len(embs)} (encoder, scale) embeddings -> {out / 'embed'}")


def main(argv=None) -> int:
    return run_stage("embed", __doc__, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
