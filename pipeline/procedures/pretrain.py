"""Procedure ``pretrain``: self-supervised encoders learned from the study's own imagery.

Chips are cut at ``pretrain.positions`` random positions spread over the study's scenes (not the trial
locations: far more places, and no outcome is ever read, so the learned features stay honest on every unit)
at every ``tile`` scale, with the tile stage's resampling, radiometry, bands and nodata. Chips with less than
``min_valid`` valid pixels are left out. Each encoder of ``pretrain.encoders`` is trained with VICReg
(:mod:`models.ssl`) and written as safetensors with a card (config, data digest, steps, losses, time) and
its loss curve; the embed stage loads it for the encoder ``<preset>_ssl``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.artifacts import write_json, write_with
from ..core.config import SSL_SUFFIX, Config, PretrainConfig, TileConfig
from ..core.errors import ImageryError
from ..core.layout import PretrainPaths, StudyLayout

log = logging.getLogger(__name__)


def random_positions(catalog, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded positions (lon, lat in EPSG:4326) spread over the scenes: each scene gets an equal share
    (a remainder goes to the first scenes), uniform over its extent in its own CRS."""
    from rasterio.warp import transform as warp_transform

    rng = np.random.default_rng(seed)
    k = len(catalog.scenes)
    counts = np.full(k, n // k) + (np.arange(k) < n % k)
    lons, lats = [], []
    for scene, m in zip(catalog.scenes, counts):
        if not m:
            continue
        x0, y0, x1, y1 = scene.bounds
        xs, ys = rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)
        lon, lat = warp_transform(scene.crs, "EPSG:4326", list(map(float, xs)), list(map(float, ys)))
        lons.append(np.asarray(lon))
        lats.append(np.asarray(lat))
    return np.concatenate(lons), np.concatenate(lats)


def sample_chips(scene_paths: Sequence[str], tile_cfg: TileConfig, cfg: PretrainConfig, seed: int,
                 client=None) -> dict[str, np.ndarray]:
    """Chips of every tile scale at :func:`random_positions` of the scenes, keeping those with at least
    ``cfg.min_valid`` valid pixels: ``{scale: (n_kept, bands, px, px) float32}``.

    Raises:
        ImageryError: when no scale keeps a chip (scenes mostly nodata, or windows larger than the scenes).
    """
    from ..imagery.tiling import tile_locations
    from .tile import open_catalog

    catalog = open_catalog(scene_paths, tile_cfg)
    lon, lat = random_positions(catalog, cfg.positions, seed)
    ids = [f"p{i}" for i in range(len(lon))]
    chipset = tile_locations(catalog, ids, lon, lat, tile_cfg.scales, tile_cfg.resampling, tile_cfg.radiometry,
                             block_px=tile_cfg.block_px, workers=tile_cfg.workers, on_outside="drop",
                             client=client)
    kept = {}
    for scale, arr in chipset.chips.items():
        valid = np.isfinite(arr).all(axis=1).mean(axis=(1, 2))
        kept[scale] = arr[valid >= cfg.min_valid]
    if not any(len(a) for a in kept.values()):
        raise ImageryError("pretrain chips", f"chips with at least {cfg.min_valid:.0%} valid pixels",
                           f"none at {len(ids)} random positions of {len(catalog.scenes)} scene(s)",
                           "lower pretrain.min_valid, or check the scenes' nodata and the scale sizes")
    return kept


def chips_digest(chips: dict[str, np.ndarray]) -> str:
    """SHA-256 of the training chips (scale names, shapes and float32 bytes, in scale order)."""
    h = hashlib.sha256()
    for scale in sorted(chips):
        arr = np.ascontiguousarray(chips[scale], dtype=np.float32)
        h.update(f"{scale}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _loss_figure(losses: list[float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, color="0.7", label="per step")
    w = max(1, len(losses) // 25)
    if len(losses) >= w and w > 1:
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.6, color="C0", label=f"mean of {w} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("VICReg loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def pretrain_encoders(chips: dict[str, np.ndarray], cfg: PretrainConfig, seed: int, out_dir: str | os.PathLike,
                      data_info: dict | None = None) -> dict[str, dict]:
    """Pretrain every encoder of ``cfg`` on ``chips`` and write its checkpoint, card and loss curve into
    ``out_dir`` (:class:`pipeline.core.layout.PretrainPaths`); returns the cards by encoder, each with its
    ``timing`` (seconds, images/s), which the card files leave out (they are bitwise reproducible)."""
    import torch
    from safetensors.torch import save_file

    from models import create_encoder, encoder_card
    from models.ssl import AugmentSpec, pretrain_vicreg
    from models.weights import file_digest

    from ..imagery.embedding import choose_device

    paths = PretrainPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    bands = next(iter(chips.values())).shape[1]
    pools = [torch.from_numpy(np.ascontiguousarray(chips[s])) for s in sorted(chips)]
    aug = AugmentSpec(tuple(cfg.augment), tuple(cfg.crop_scale), cfg.noise_sd, cfg.band_drop)
    dev = choose_device(cfg.device)
    steps = cfg.gpu_steps if dev.type == "cuda" and cfg.gpu_steps else cfg.steps
    digest = chips_digest(chips)
    cards = {}
    for name in cfg.encoders:
        enc = create_encoder(name, in_chans=bands, seed=seed)
        result = pretrain_vicreg(enc, pools, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, projector_dim=cfg.projector_dim, aug=aug, seed=seed,
                                 device=dev)
        state = {k: v.detach().cpu().contiguous() for k, v in enc.model.state_dict().items()}
        # one metadata key: safetensors writes a metadata map in no fixed order, so two keys made the file's bytes
        # (and DVC's hash of the stage) change from run to run with identical tensors
        write_with(paths.weights(name), lambda t: save_file(state, str(t),
                                                            metadata={"pretrained": f"{name} {cfg.method}"}))
        _loss_figure(result.losses, f"{name}: VICReg on {sum(len(a) for a in chips.values()):,} chips",
                     paths.loss_png(name))
        first, last = float(np.mean(result.losses[:10])), float(np.mean(result.losses[-10:]))
        card = {
            "encoder": name, "embed_as": f"{name}{SSL_SUFFIX}", "method": cfg.method,
            "reference": "Bardes, Ponce & LeCun, VICReg, ICLR 2022",
            "model": {k: v for k, v in encoder_card(enc).items() if k not in ("state_sha256", "weights_file_sha256")},
            "weights_sha256": file_digest(paths.weights(name)),
            "training": {"steps": steps, "batch_size": cfg.batch_size, "images_seen": result.images_seen,
                         "lr": cfg.lr, "weight_decay": cfg.weight_decay, "projector_dim": cfg.projector_dim,
                         "augment": list(cfg.augment), "crop_scale": list(cfg.crop_scale), "noise_sd": cfg.noise_sd,
                         "band_drop": cfg.band_drop, "seed": seed, "device": result.device,
                         "precision": result.precision, "torch": torch.__version__},
            "data": {"chips_sha256": digest, "chips_per_scale": {s: int(len(a)) for s, a in chips.items()},
                     **(data_info or {})},
            "loss": {"first10_mean": first, "last10_mean": last, "per_step": result.losses,
                     "final_terms": result.terms},
        }
        write_json(paths.card(name), card)
        cards[name] = {**card, "timing": {"seconds": round(result.seconds, 2),
                                          "images_per_s": round(result.images_seen / max(result.seconds, 1e-9), 1)}}
        log.info("pretrain %s: %d steps in %.1f s (%s), loss %.2f -> %.2f", name, steps, result.seconds,
                 result.device, first, last)
    return cards


def run(cfg: Config, out: str | os.PathLike, params_dir: str | os.PathLike, *,
        scene_paths: Sequence[str] | None = None) -> dict[str, dict]:
    """The pretrain stage: chips at random positions of the study's scenes (or ``scene_paths``) into
    ``out/pretrain``. With no encoder to pretrain it writes only the index (the stage's output exists)."""
    from ..core.compute import dask_client
    from .tile import study_scenes

    layout = StudyLayout(out)
    paths = layout.pretrain
    paths.root.mkdir(parents=True, exist_ok=True)
    for stale in list(paths.root.iterdir()):  # the outputs of other encoder lists never linger
        if stale.is_file():
            stale.unlink()
    cards: dict[str, dict] = {}
    if cfg.pretrain.encoders:
        from models.registry import check_trainable

        for name in cfg.pretrain.encoders:
            check_trainable(name)
        scenes = list(scene_paths) if scene_paths else study_scenes(cfg, out, params_dir)
        # tile options that only change where chips are cut around units do not apply to random positions
        tile_cfg = replace(cfg.tile, jitter_m=())
        with dask_client(cfg.compute) as client:
            chips = sample_chips(scenes, tile_cfg, cfg.pretrain, cfg.seed, client)
        cards = pretrain_encoders(chips, cfg.pretrain, cfg.seed, paths.root,
                                  {"positions": cfg.pretrain.positions, "min_valid": cfg.pretrain.min_valid,
                                   "scenes": [Path(p).name for p in scenes]})
    write_json(paths.index, {"encoders": list(cfg.pretrain.encoders), "method": cfg.pretrain.method,
                             "cards": {n: paths.card(n).name for n in cards}})
    write_json(layout.pretrain_timing, {n: {**c["timing"], "device": c["training"]["device"],
                                            "precision": c["training"]["precision"], "steps": c["training"]["steps"]}
                                        for n, c in cards.items()})
    return cards
