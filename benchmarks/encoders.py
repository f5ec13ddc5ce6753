"""Encoder table of a study that has run (default: the default study, after ``dvc repro``): for each choice
of ``features.encoders`` (spectral statistics, random convolutional features, random-init and
self-supervised ViT/ResNet, each learned one joined with spectral), the features, cate and evaluate stages on
the study's own chips, folds and params; per scale set the AUTOC RATE Ratio, corr(tau hat, tau) where the
truth is known, the paired test of each encoder choice against ``spectral`` on the same folds and bootstrap
draws (both priorities scored with the spectral run's sequential DR scores), and the evaluate stage's paired
test of all scales against the single scale chosen on earlier folds. Embedding time per encoder is
measured here; pretraining time is read from the pretrain stage's cards (``<study-out>/pretrain``; when an
``_ssl`` encoder has no checkpoint there, the pretrain stage runs into a temporary folder, timed).

    python benchmarks/encoders.py [--study-out out --params params.yaml] [--choices spectral rcf spectral+rcf]

A choice joins encoders with ``+``; ``ENCODER/pcaK`` reduces that encoder to K principal components per scale
before joining (``features.encoder_pca``), e.g. ``spectral+resnet_tiny_ssl/pca16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study-out", type=Path, default=Path("out"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--choices", nargs="+",
                    default=["spectral", "rcf", "vit_tiny", "resnet_tiny", "vit_tiny_ssl", "resnet_tiny_ssl",
                             "spectral+rcf", "spectral+vit_tiny_ssl", "spectral+resnet_tiny_ssl",
                             "spectral+resnet_tiny_ssl/pca16"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pipeline.core.config import SSL_SUFFIX, load_config
    from pipeline.core.layout import PretrainPaths, StudyLayout
    from pipeline.estimate.inference import sequential_rate
    from pipeline.procedures.cate import run_cate
    from pipeline.procedures.embed import embed_study
    from pipeline.procedures.evaluate import evaluate_study
    from pipeline.procedures.features import build_features
    from pipeline.procedures.tile import study_scenes

    layout = StudyLayout(args.study_out)
    if not layout.tile.manifest.is_file():
        print(f"no chip store at {layout.tile.root}: run the study first (dvc repro)")
        return
    cfg = load_config(args.params)
    from pipeline.core.config import EncoderPcaConfig

    def parse_choice(choice: str) -> tuple[tuple[str, ...], tuple]:
        names, pcas = [], []
        for token in choice.split("+"):
            name, _, pca = token.partition("/pca")
            names.append(name)
            if pca:
                pcas.append(EncoderPcaConfig(encoder=name, pca=int(pca)))
        return tuple(names), tuple(pcas)

    encoders = sorted({e for c in args.choices for e in parse_choice(c)[0]})
    truth = layout.truth if layout.truth.exists() else None
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        embed_dir = Path(tmp) / "embed"
        pretrain_dir = layout.pretrain.root
        need = sorted({e[: -len(SSL_SUFFIX)] for e in encoders if e.endswith(SSL_SUFFIX)})
        if need and not all(PretrainPaths(pretrain_dir).weights(b).is_file() for b in need):
            from pipeline.procedures.pretrain import run as pretrain_run

            pretrain_dir = Path(tmp) / "out" / "pretrain"
            pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, encoders=tuple(need)))
            t0 = time.perf_counter()
            pretrain_run(pcfg, Path(tmp) / "out", args.params.resolve().parent,
                         scene_paths=study_scenes(cfg, args.study_out, args.params.resolve().parent))
            print(f"pretraining ({', '.join(need)}): {time.perf_counter() - t0:.1f} s")
        timing_file = Path(pretrain_dir).parent / "pretrain_timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        for b in need:
            card = json.loads(PretrainPaths(pretrain_dir).card(b).read_text())
            t = card["training"]
            secs = timing.get(b, {}).get("seconds", t.get("seconds", float("nan")))
            print(f"pretraining {b}: {t['steps']} steps x {t['batch_size']} chips, {secs:.1f} s on "
                  f"{t['device']} ({t['precision']}), loss {card['loss']['first10_mean']:.2f} -> "
                  f"{card['loss']['last10_mean']:.2f}")
        for e in encoders:
            t0 = time.perf_counter()
            embed_study(layout.tile.root, dataclasses.replace(cfg.embed, encoders=(e,)), cfg.seed, embed_dir,
                        progress=False, pretrain_dir=pretrain_dir)
            print(f"embedding {e}: {time.perf_counter() - t0:.1f} s")
        for choice in args.choices:
            names, pcas = parse_choice(choice)
            feat_cfg = dataclasses.replace(cfg.features, encoders=names, encoder_pca=pcas)
            base = Path(tmp) / choice.replace("/", "_")
            t0 = time.perf_counter()
            build_features(layout.units, layout.tile.root, embed_dir, feat_cfg, base / "features")
            run_cate(layout.units, base / "features", cfg.cate, cfg.seed, base / "cate", progress=False)
            m = evaluate_study(base / "cate", cfg.evaluate, cfg.seed, base / "evaluate", truth)
            runs[choice] = (m, pd.read_parquet(base / "cate" / "cate.parquet"),
                            pd.read_parquet(base / "cate" / "dr.parquet"))
            print(f"{choice}: features + cate + evaluate {time.perf_counter() - t0:.1f} s", flush=True)
    ref = runs.get("spectral")
    target = cfg.evaluate.targets[0]
    q = np.linspace(1.0 / cfg.evaluate.q_grid, 1.0, cfg.evaluate.q_grid)
    print(f"\n| encoders | scale set | {target} RATE Ratio | corr(tau hat, tau) | paired vs spectral: diff (SE), p |"
          " all vs single scale chosen on earlier folds: diff (SE), p |")
    print("|---|---|---|---|---|---|")
    for choice, (m, table, dr) in runs.items():
        for name, e in m["sets"].items():
            paired = ""
            if ref is not None and choice != "spectral":
                ref_table, ref_dr = ref[1], ref[2]
                prio = np.column_stack([
                    t[t["set"] == name].set_index("unit_id").reindex(ref_dr["unit_id"])["priority_seq"].to_numpy()
                    for t in (table, ref_table)])
                res = sequential_rate(ref_dr["dr_score_seq"].to_numpy(), prio, ref_dr["cluster_id"].to_numpy(),
                                      ref_dr["fold"].to_numpy(), target=target, q=q, n_boot=cfg.evaluate.n_boot,
                                      seed=cfg.seed)
                paired = f"{res.estimate:+.3f} ({res.std_err:.3f}), p = {res.p_value():.3f}"
            corr = f"{e['corr_true_tau']:.2f}" if "corr_true_tau" in e else ""
            vs_single = ""
            pt = m.get("paired", {}).get(target)
            if name == m.get("paired", {}).get("reference") and isinstance(pt, dict) and "estimate" in pt:
                vs_single = f"{pt['estimate']:+.3f} ({pt['std_err']:.3f}), p = {pt['p_value']:.3f}"
            print(f"| {choice} | {name} | {e[target]['ratio']:.2f} | {corr} | {paired} | {vs_single} |")


if __name__ == "__main__":
    main()
