"""Procedure ``scaling``: the scaling-strategy study, complexity and speed of encoders grown by each strategy.

For every base encoder, strategy and FLOPs factor s: the scaled configuration (:func:`models.scaling.scale`),
its achieved FLOPs, parameters and activations (:mod:`models.complexity`), and its inference speed
(images/s, median of timed batches on the chosen device). Fitted log-log exponents of activations and time
against FLOPs summarise each strategy (Dollár, Singh & Girshick 2021: activations grow as s^(1 - alpha/2)).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.complexity import count
from models.registry import build_family, list_presets
from models.scaling import exponents, scale

from ..core.artifacts import write_json, write_with
from ..core.config import Config
from ..core.errors import ConfigError
from ..core.layout import ScalingPaths, StudyLayout
from ..imagery.embedding import choose_device, forward_batch, prepare_encoder
from ..report.figures import plot_scaling


def time_forward(encoder, batch: int, device: torch.device, repeats: int = 5) -> float:
    """Median images/s of ``encoder`` on random inputs of its own size (one warm-up batch), run as the
    embedding stage runs it (:func:`pipeline.imagery.embedding.forward_batch`: bf16 autocast and channels-last on a
    GPU, float32 on the CPU)."""
    x = torch.rand(batch, encoder.in_chans, encoder.input_size, encoder.input_size, device=device) * 0.3
    enc = prepare_encoder(encoder, device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward_batch(enc, x, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def fit_exponent(x, y) -> float:
    """Slope of log(y) on log(x)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def run_scaling_study(cfg, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Run the study described by ``cfg`` (a ``ScalingConfig``); write the table, the metrics and the
    activation and time figures (:class:`~pipeline.core.layout.ScalingPaths`) under ``out_dir``."""
    presets = list_presets()
    device = choose_device(cfg.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    combos = [(b, st, s) for b in cfg.bases for st in cfg.strategies for s in cfg.factors]
    it = combos
    if progress:
        from tqdm import tqdm
        it = tqdm(combos, desc="scaling", unit="model")
    for base_name, strategy, s in it:
        if base_name not in presets:
            raise ConfigError("scaling.bases", f"encoder presets among {sorted(presets)}", repr(base_name),
                              "add the preset to configs/encoders/ or fix the name")
        base = dict(presets[base_name])
        sc = scale(base, strategy, s)
        torch.manual_seed(0)
        enc = build_family(dict(sc.config), cfg.in_chans)
        c = count(enc.model, cfg.in_chans, enc.input_size)
        ips = time_forward(enc, cfg.batch_size, device, cfg.repeats) if cfg.timing else float("nan")
        rows.append({"base": base_name, "family": base["family"], "strategy": str(strategy), "s": s,
                     "alpha": exponents(strategy)[1], "flops": c.flops, "params": c.params, "acts": c.acts,
                     "images_per_s": ips, "config": repr(sc.config)})
    table = pd.DataFrame(rows)
    for b in cfg.bases:
        ref = table[(table["base"] == b) & (table["s"] == 1)].iloc[0]
        m = table["base"] == b
        table.loc[m, "flops_factor"] = table.loc[m, "flops"] / ref["flops"]
        table.loc[m, "acts_factor"] = table.loc[m, "acts"] / ref["acts"]
        table.loc[m, "time_factor"] = ref["images_per_s"] / table.loc[m, "images_per_s"]
    metrics = {"device": str(device), "in_chans": cfg.in_chans, "factors": list(cfg.factors), "exponents": {}}
    for (b, st), g in table.groupby(["base", "strategy"], sort=False):
        e_d, e_w, e_r = exponents(st)
        # activations grow as d * w * r^2: s^(e_d + e_w / 2 + e_r), i.e. s^(1 - alpha / 2) for alpha strategies
        e = {"acts_vs_flops": fit_exponent(g["flops"], g["acts"]), "theory_acts": e_d + e_w / 2 + e_r}
        if cfg.timing:
            e["time_vs_flops"] = fit_exponent(g["flops"], 1.0 / g["images_per_s"])
        metrics["exponents"].setdefault(b, {})[st] = e
    paths = ScalingPaths(Path(out_dir))
    write_with(paths.table, lambda t: table.to_csv(t, index=False, float_format="%.6g"))
    write_json(paths.metrics, metrics)
    write_with(paths.figure("acts"), lambda t: plot_scaling(table, "acts", t))
    if cfg.timing:
        write_with(paths.figure("time"), lambda t: plot_scaling(table, "time", t))
    return metrics


def run(cfg: Config, out: str | os.PathLike, progress: bool = True) -> dict:
    """The scaling stage: ``cfg.scaling`` into ``out/scaling``."""
    return run_scaling_study(cfg.scaling, StudyLayout(out).scaling.root, progress)
