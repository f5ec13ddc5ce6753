"""Procedure ``quality``: scaling strategies measured on what they buy, probe error against compute.

Dollár, Singh & Girshick (CVPR 2021) claim that fast compound scaling (``dWr``) reaches a given error at a
lower run time than depth-, width- or resolution-first scaling. This procedure measures that claim on our
chips and our encoders:

1. a texture-design scene is simulated (:func:`pipeline.procedures.simulate.simulate_study`), whose land cover
   (built-up, crop strips, water, strip orientation) is known for every pixel;
2. every base encoder is grown by every strategy and FLOPs factor s (:func:`models.scaling.scale`); each
   model is pretrained with VICReg (:func:`models.ssl.pretrain_vicreg`) for the same number of images
   (steps x batch), on chips of two window sizes at random positions;
3. its frozen, pooled features are scored by a cross-validated ridge probe (:func:`probe_errors`) on targets
   that use no trial outcome: the built-up, crop and water fractions and the mean strip orientation of coarse
   chips at other random positions, and the compactness of the built-up pixels around every village (the
   texture design's fine effect modifier) from fine chips. The probe error of a target is 1 - cross-validated
   R^2 (the share of its variance the features leave unexplained); a model's error is the mean over targets;
4. each strategy's error-against-time and error-against-FLOPs curve is summarised by the time and FLOPs it
   needs to reach a common error (:func:`time_to_error`), which decides whether ``dWr`` gets there first.

Spectral statistics and each base with its random initialisation (no pretraining) are probed as references.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.artifacts import write_json, write_with
from ..core.config import Config, QualityConfig, SimulateConfig
from ..core.errors import ConfigError
from ..core.layout import QualityPaths, StudyLayout

log = logging.getLogger(__name__)

COARSE_TARGETS = ("built", "crop", "water", "orientation")
FINE_TARGETS = ("compactness",)
TARGET_NAMES = COARSE_TARGETS + FINE_TARGETS
ALPHAS = np.logspace(-3, 4, 15)


@dataclass
class ProbeData:
    """Chips and outcome-free targets of the quality study (reflectance chips, float32, native pixels)."""

    train: list[np.ndarray]  # pretraining pools: coarse and fine windows at random positions
    coarse: np.ndarray  # (n, bands, coarse_px, coarse_px) at other random positions
    coarse_targets: pd.DataFrame  # COARSE_TARGETS per coarse chip
    fine: np.ndarray  # (villages, bands, fine_px, fine_px), centred on the villages
    fine_targets: pd.DataFrame  # FINE_TARGETS per village


def cut_windows(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, px: int) -> np.ndarray:
    """Windows of ``px`` x ``px`` native pixels of ``image`` (bands, H, W) centred on the pixel corners
    (rows, cols): rows ``r - px // 2`` to ``r - px // 2 + px``."""
    h = px // 2
    out = np.empty((len(rows), image.shape[0], px, px), dtype=np.float32)
    for i, (r, c) in enumerate(zip(rows, cols)):
        out[i] = image[:, r - h:r - h + px, c - h:c - h + px]
    return out


def window_fraction(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, px: int) -> np.ndarray:
    """Mean of ``mask`` over the same windows as :func:`cut_windows` (summed-area table)."""
    integral = np.pad(np.asarray(mask, np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0, c0 = rows - px // 2, cols - px // 2
    r1, c1 = r0 + px, c0 + px
    return (integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]) / float(px * px)


def random_corners(rng: np.random.Generator, n: int, size: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pixel corners whose ``px`` windows lie inside a ``size`` x ``size`` scene."""
    lo, hi = px // 2, size - (px - px // 2)
    return rng.integers(lo, hi + 1, n), rng.integers(lo, hi + 1, n)


def probe_data(cfg: QualityConfig, seed: int) -> ProbeData:
    """Simulate the texture-design scene and cut the pretraining and probe chips with their targets."""
    from .simulate import simulate_study

    sim = simulate_study(SimulateConfig(design="texture", scene_px=cfg.scene_px, n_locations=cfg.n_villages),
                         seed)
    refl, lc = sim.reflectance, sim.landcover
    rng = np.random.default_rng([seed, 17])
    train = []
    for px in (cfg.coarse_px, cfg.fine_px):
        r, c = random_corners(rng, cfg.train_chips, cfg.scene_px, px)
        train.append(cut_windows(refl, r, c, px))
    r, c = random_corners(rng, cfg.probe_chips, cfg.scene_px, cfg.coarse_px)
    coarse = cut_windows(refl, r, c, cfg.coarse_px)
    coarse_targets = pd.DataFrame({name: window_fraction(lc[name], r, c, cfg.coarse_px) for name in COARSE_TARGETS})
    vr, vc = sim.villages_px
    fine = cut_windows(refl, vr, vc, cfg.fine_px)
    per_village = sim.truth.drop_duplicates("location_id").sort_values("location_id")
    fine_targets = pd.DataFrame({"compactness": per_village["f_fine"].to_numpy()})
    return ProbeData(train, coarse, coarse_targets, fine, fine_targets)


def probe_errors(features: np.ndarray, targets: pd.DataFrame, folds: int, seed: int) -> dict[str, float]:
    """Cross-validated linear-probe error per target: 1 - R^2 of out-of-fold ridge predictions.

    In each of ``folds`` seeded folds, features are standardised on the training part and a ridge
    regression is fitted with its penalty chosen among :data:`ALPHAS` by leave-one-out error on that part
    only; the held-out part is predicted. R^2 pools the out-of-fold predictions against the target's overall
    variance, so 0 means a perfect probe, 1 a probe no better than the mean and values above 1 worse.
    A constant feature matrix gives error 1 or more (nothing to learn from)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, np.float64)
    if not np.isfinite(X).all():
        raise ConfigError("quality probe features", "finite features", "NaN or inf in an encoder's output",
                          "check the encoder (or lower quality.lr if pretraining diverged)")
    out = {}
    split = list(KFold(folds, shuffle=True, random_state=seed).split(X))
    for name in targets.columns:
        y = targets[name].to_numpy(np.float64)
        pred = np.empty_like(y)
        for tr, te in split:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
            model.fit(X[tr], y[tr])
            pred[te] = model.predict(X[te])
        ss = float(((y - y.mean()) ** 2).sum())
        out[name] = float(((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")
    return out


def embed_all(enc, chips: np.ndarray, device, batch: int = 256) -> tuple[np.ndarray, float]:
    """Frozen features of ``chips`` and the seconds it took (the embedding stage's forward pass)."""
    import torch

    from ..imagery.embedding import forward_batch, prepare_encoder

    enc = prepare_encoder(enc, device)
    parts = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(np.ascontiguousarray(chips[i:i + batch]))
            parts.append(forward_batch(enc, x, device).float().cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    enc.to("cpu")
    return np.concatenate(parts), seconds


def score(enc, data: ProbeData, cfg: QualityConfig, seed: int, device) -> dict:
    """Probe errors of one encoder on both probe sets, and its embedding time."""
    fc, t_c = embed_all(enc, data.coarse, device)
    ff, t_f = embed_all(enc, data.fine, device)
    errors = {**probe_errors(fc, data.coarse_targets, cfg.probe_folds, seed),
              **probe_errors(ff, data.fine_targets, cfg.probe_folds, seed)}
    return {**{f"err_{k}": v for k, v in errors.items()}, "error": float(np.nanmean(list(errors.values()))),
            "embed_s": t_c + t_f, "embed_images_per_s": (len(fc) + len(ff)) / max(t_c + t_f, 1e-9)}


def _interp_crossing(xs: np.ndarray, errs: np.ndarray, target: float) -> float:
    """First x (in order of s, log-linear between points) at which the error falls to ``target``; inf when
    it never does."""
    if errs[0] <= target:
        return float(xs[0])
    for i in range(1, len(xs)):
        if errs[i] <= target:
            w = (errs[i - 1] - target) / (errs[i - 1] - errs[i])
            return float(np.exp(np.log(xs[i - 1]) + w * (np.log(xs[i]) - np.log(xs[i - 1]))))
    return float("inf")


def time_to_error(curves: dict[str, pd.DataFrame], target: float, x: str) -> dict[str, float | None]:
    """For each strategy's curve (rows ordered by s, base first), the ``x`` (``pretrain_s`` or ``flops``) at
    which its error first reaches ``target``, interpolated log-linearly between consecutive factors; None
    when it never does."""
    out = {}
    for st, g in curves.items():
        v = _interp_crossing(g[x].to_numpy(float), g["error"].to_numpy(float), target)
        out[st] = v if np.isfinite(v) else None
    return out


def verdict(table: pd.DataFrame, strategies, reference: str = "dWr") -> dict:
    """Per base: the common target error (the median error of the scaled models, s > 1), every strategy's
    pretraining time and FLOPs to reach it, the fastest strategy (wall time: noisy between runs on a shared
    machine) and the one needing the fewest FLOPs per image (deterministic), and whether ``reference`` is
    the fastest."""
    out = {}
    models = table[table["strategy"].isin(list(strategies) + ["base"])]
    for b, g in models.groupby("base", sort=False):
        base_row = g[g["strategy"] == "base"]
        curves = {}
        for st in strategies:
            rows = pd.concat([base_row, g[g["strategy"] == st]]).sort_values("s")
            curves[st] = rows.groupby("s", sort=True)[["error", "pretrain_s", "flops"]].mean().reset_index()
        scaled = g[g["s"] > 1]
        if scaled.empty:
            continue
        target = float(scaled.groupby(["strategy", "s"])["error"].mean().median())
        t = time_to_error(curves, target, "pretrain_s")
        f = time_to_error(curves, target, "flops")
        finite = {k: v for k, v in t.items() if v is not None}
        fastest = min(finite, key=finite.get) if finite else None
        reached = {k: v for k, v in f.items() if v is not None}
        base_err = float(base_row["error"].mean())
        best = {st: float(c["error"].min()) for st, c in curves.items()}
        out[b] = {"target_error": target, "base_error": base_err, "best_error": best,
                  "seconds_to_target": t, "flops_to_target": f, "fastest": fastest,
                  "fewest_flops": min(reached, key=reached.get) if reached else None,
                  f"{reference}_fastest": fastest == reference,
                  f"{reference}_vs_fastest": (t[reference] / finite[fastest]) if fastest and t.get(reference) else None}
    return out


def run_quality_study(cfg: QualityConfig, seed: int, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Run the quality study described by ``cfg``; write the table, metrics and figures under ``out_dir``
    (:class:`~pipeline.core.layout.QualityPaths`)."""
    import torch

    from models import create_encoder
    from models.complexity import count
    from models.registry import build_family, list_presets
    from models.scaling import scale
    from models.ssl import AugmentSpec, pretrain_vicreg

    from ..imagery.embedding import choose_device
    from ..report.figures import plot_quality

    device = choose_device(cfg.device)
    gpu = device.type == "cuda"
    steps = cfg.gpu_steps if gpu and cfg.gpu_steps else cfg.steps
    bases, factors = (cfg.gpu_bases, cfg.gpu_factors) if gpu else (cfg.bases, cfg.factors)
    presets = list_presets()
    for b in bases:
        if b not in presets or presets[b].get("family") not in ("vit", "resnet"):
            raise ConfigError("quality.gpu_bases" if gpu else "quality.bases",
                              "vit or resnet presets in configs/encoders/", repr(b),
                              "use e.g. vit_tiny, vit_scaling_base or resnet_scaling_base")
    data = probe_data(cfg, seed)
    bands = data.coarse.shape[1]
    pools = [torch.from_numpy(p) for p in data.train]
    aug = AugmentSpec(("flip", "crop", "noise", "band_drop"), (0.5, 1.0), 0.01, 0.2)
    rows: list[dict] = []
    ref = score(create_encoder("spectral", in_chans=bands), data, cfg, seed, device)
    rows.append({"base": "-", "family": "spectral", "strategy": "spectral", "s": float("nan"), "seed": seed, **ref})
    jobs = [(b, "base", 1.0) for b in bases] + [(b, st, s) for b in bases for st in cfg.strategies
                                              for s in factors if s != 1.0]
    it = jobs
    if progress:
        from tqdm import tqdm
        it = tqdm(jobs, desc="quality", unit="model")
    done: dict[tuple, dict] = {}  # a scaled configuration that rounds to another's is trained once
    owner: dict[tuple, str] = {}  # ... and the table names the first (strategy, s) that made it
    for b, st, s in it:
        sc = scale(presets[b], "d" if st == "base" else st, s)
        key = (b, repr(sorted(sc.config.items())))
        same_as = owner.setdefault(key, f"{st} {s:g}")
        if st == "base":
            enc = build_family(dict(sc.config), bands, seed=seed)
            rows.append({"base": b, "family": sc.config["family"], "strategy": "init", "s": 1.0, "seed": seed,
                         **count(enc.model, bands, enc.input_size).as_dict(), **score(enc, data, cfg, seed, device)})
        for sd in cfg.seeds:
            if (key, sd) not in done:
                enc = build_family(dict(sc.config), bands, seed=seed + sd)
                c = count(enc.model, bands, enc.input_size)
                res = pretrain_vicreg(enc, pools, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                      weight_decay=0.05, projector_dim=256, aug=aug, seed=seed + sd, device=device)
                done[(key, sd)] = {**c.as_dict(), "pretrain_s": res.seconds, "images_seen": res.images_seen,
                                   "pretrain_images_per_s": res.images_seen / max(res.seconds, 1e-9),
                                   "loss_first": float(np.mean(res.losses[:10])),
                                   "loss_last": float(np.mean(res.losses[-10:])),
                                   **score(enc, data, cfg, seed, device)}
            rows.append({"base": b, "family": sc.config["family"], "strategy": st, "s": float(s), "seed": sd,
                         **done[(key, sd)], "config": repr(sc.config),
                         "same_model_as": "" if same_as == f"{st} {s:g}" else same_as})
    table = pd.DataFrame(rows)
    table["device"] = str(device)
    collapsed = sorted({f"{r['base']} {r['strategy']} {r['s']:g} = {r['same_model_as']}" for r in rows
                        if r.get("same_model_as")})
    if collapsed:
        log.warning("quality: rounding made these scaled models identical to another (trained once): %s",
                    "; ".join(collapsed))
    metrics = {"device": str(device), "steps": steps, "batch_size": cfg.batch_size,
               "images_seen": steps * cfg.batch_size, "bases": list(bases), "factors": list(factors),
               "seeds": list(cfg.seeds), "same_model": collapsed,
               "targets": list(TARGET_NAMES), "verdict": verdict(table, cfg.strategies),
               "references": {"spectral": float(ref["error"]),
                              **{f"{b} init": float(table[(table["base"] == b) & (table["strategy"] == "init")]
                                                    ["error"].iloc[0]) for b in bases}}}
    if len(cfg.seeds) > 1:
        sd = table[table["strategy"].isin(list(cfg.strategies) + ["base"])].groupby(
            ["base", "strategy", "s"])["error"].std()
        metrics["seed_sd_median"] = float(sd.median())
    paths = QualityPaths(Path(out_dir))
    write_with(paths.table, lambda t: table.to_csv(t, index=False, float_format="%.6g"))
    write_json(paths.metrics, metrics)
    for against in ("flops", "time"):
        write_with(paths.figure(against), lambda t: plot_quality(table, metrics, against, t))
    return metrics


def run(cfg: Config, out: str | os.PathLike, progress: bool = True) -> dict:
    """The quality stage: ``cfg.quality`` into ``out/quality``."""
    return run_quality_study(cfg.quality, cfg.seed, StudyLayout(out).quality.root, progress)
