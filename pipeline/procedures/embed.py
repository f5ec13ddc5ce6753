"""Procedure ``embed``: every scale of a chip store through every configured encoder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from models import create_encoder, encoder_card
from models.errors import EncoderError
from models.registry import list_encoders

from ..core.artifacts import write_json, write_npy
from ..core.compute import dask_client, run_ordered
from ..core.config import SSL_SUFFIX, Config
from ..core.layout import ChipStorePaths, EmbeddingPaths, PretrainPaths, StudyLayout
from ..imagery.embedding import embed_chips
from ..imagery.tiling import read_chip_store


def make_encoder(name: str, in_chans: int, seed: int, pretrain_dir: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None):
    """The encoder ``name`` of ``embed.encoders``: a preset or family (with the local checkpoint ``weights``,
    from ``embed.weights``), or ``<preset>_ssl``, the preset with the weights that the pretrain stage wrote
    into ``pretrain_dir``.

    Raises:
        EncoderError: an ``_ssl`` name without its checkpoint (names the file and the fix).
    """
    if name.endswith(SSL_SUFFIX) and name not in list_encoders():
        base = name[: -len(SSL_SUFFIX)]
        if pretrain_dir is None:
            raise EncoderError(f"embed.encoders: {name!r}", "the pretrain stage's output folder", "none given",
                               "pass pretrain_dir (a study's out/pretrain)")
        weights = PretrainPaths(Path(pretrain_dir)).weights(base)
        if not weights.is_file():
            raise EncoderError(f"embed.encoders: {name!r}", f"the pretrain stage's checkpoint {weights}",
                               "no such file", f"add {base} to pretrain.encoders and run the pretrain stage first")
        enc = create_encoder(base, in_chans=in_chans, seed=seed, weights=weights)
        enc.name = name
        return enc
    return create_encoder(name, in_chans=in_chans, seed=seed, weights=weights)


def weights_paths(cfg, params_dir: str | os.PathLike | None) -> dict[str, str]:
    """``embed.weights`` as {encoder: absolute path}, relative paths taken from ``params_dir``."""
    base = Path(params_dir) if params_dir is not None else Path.cwd()
    return {w.encoder: str(Path(w.path) if Path(w.path).is_absolute() else (base / w.path).resolve())
            for w in getattr(cfg, "weights", ())}


def _embed_rows(tile_dir: str, scale: str, name: str, in_chans: int, seed: int, start: int, stop: int,
                batch_size: int, device: str, state: dict | None = None, pretrain_dir: str | None = None,
                weights: str | None = None) -> np.ndarray:
    """Embed rows [start, stop) of one scale of a chip store: the unit of work of a Dask task (``state``: the
    encoder's fitted buffers, for encoders fitted on the chips)."""
    import zarr

    chips = zarr.open_group(str(ChipStorePaths(Path(tile_dir)).chips), mode="r")[scale]
    enc = make_encoder(name, in_chans, seed, pretrain_dir, weights)
    if state is not None:
        enc.load_state_dict(state)
    return embed_chips(enc, chips[start:stop], batch_size, device)


FIT_SAMPLE = 2048  # chips per scale from which an encoder fitted on imagery (random features) draws its patches


def fit_on_chips(enc, chips: dict, seed: int):
    """Fit an encoder that learns from imagery alone (``fit_patches``: MOSAIKS kernels) on a seeded sample
    of up to :data:`FIT_SAMPLE` chips of every scale (one set of kernels for all scales); other encoders pass
    through. Outcomes are never read, so the features stay honest on every unit."""
    if not hasattr(enc, "fit_patches"):
        return enc
    rng = np.random.default_rng(seed)
    sample = []
    for scale in sorted(chips):
        arr = chips[scale]
        rows = np.sort(rng.choice(arr.shape[0], min(FIT_SAMPLE, arr.shape[0]), replace=False))
        sample.append(np.asarray(arr.oindex[rows] if hasattr(arr, "oindex") else np.asarray(arr)[rows]))
    return enc.fit_patches(sample, seed=seed)


def embed_study(tile_dir: str | os.PathLike, cfg, seed: int, out_dir: str | os.PathLike,
                progress: bool = True, client=None, pretrain_dir: str | os.PathLike | None = None,
                fitted_from: str | os.PathLike | None = None,
                params_dir: str | os.PathLike | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Embed every scale of a chip store with every encoder of ``cfg`` (an ``EmbedConfig``).

    Writes per encoder the (locations x dim) array of every scale (rows in the chip store's location
    order), the column names and the encoder card (name, family, config, params, digests); see
    :class:`pipeline.core.layout.EmbeddingPaths`. With a Dask ``client``, each scale is split into
    partitions of whole batches (aligned with the synchronous batches, so the embeddings are bitwise
    identical on the CPU); workers read the chip store from the shared filesystem.
    """
    locations, chips, _ = read_chip_store(tile_dir)
    paths = EmbeddingPaths(Path(out_dir))
    result = {}
    bands = next(iter(chips.values())).shape[1]
    local = weights_paths(cfg, params_dir)
    for name in cfg.encoders:
        enc = make_encoder(name, bands, seed, pretrain_dir, local.get(name))
        state = None
        if hasattr(enc, "fit_patches"):
            if fitted_from is not None:
                enc.load_state_dict(load_fitted(EmbeddingPaths(Path(fitted_from)).fitted_state(name), name))
            else:
                enc = fit_on_chips(enc, chips, seed)
            state = enc.state_dict()
            save_fitted(paths.fitted_state(name), state)
        for scale, arr in chips.items():
            if client is not None:
                step = cfg.batch_size * max(1, 1024 // cfg.batch_size)
                parts = [(str(tile_dir), scale, name, bands, seed, s, min(s + step, arr.shape[0]), cfg.batch_size,
                          cfg.device, state, None if pretrain_dir is None else str(pretrain_dir), local.get(name))
                         for s in range(0, arr.shape[0], step)]
                emb = np.concatenate(run_ordered(client, _embed_rows, parts), axis=0)
            else:
                emb = embed_chips(enc, arr, cfg.batch_size, cfg.device, num_workers=cfg.num_workers,
                                  progress=progress, desc=f"{name}:{scale}", read_threads=cfg.read_threads)
            write_npy(paths.array(name, scale), emb)
            result[(name, scale)] = emb
        names = enc.feature_names() if hasattr(enc, "feature_names") else [f"d{i}" for i in range(enc.embed_dim)]
        write_json(paths.feature_names(name), names)
        card = {**encoder_card(enc), "n_locations": len(locations), "scales": list(chips)}
        if name.endswith(SSL_SUFFIX) and pretrain_dir is not None:
            card["pretrain_card"] = str(PretrainPaths(Path(pretrain_dir)).card(name[: -len(SSL_SUFFIX)]))
        write_json(paths.card(name), card)
    return result


def run(cfg: Config, out: str | os.PathLike, progress: bool = True,
        params_dir: str | os.PathLike | None = None) -> dict:
    """The embed stage: ``out/tile`` into ``out/embed``, on the compute backend of ``cfg.compute``
    (``embed.weights`` paths relative to ``params_dir``)."""
    layout = StudyLayout(out)
    with dask_client(cfg.compute) as client:
        return embed_study(layout.tile.root, cfg.embed, cfg.seed, layout.embed.root, progress, client,
                           pretrain_dir=layout.pretrain.root, params_dir=params_dir)


def save_fitted(path: Path, state: dict) -> None:
    """An encoder's fitted state (tensors) as safetensors."""
    from safetensors.torch import save_file

    from ..core.artifacts import write_with

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_with(path, lambda t: save_file(tensors, str(t)))


def load_fitted(path: Path, name: str) -> dict:
    """The fitted state written by :func:`save_fitted`.

    Raises:
        EncoderError: when the file is missing (the embed folder predates it, or the encoder was not run).
    """
    from safetensors.torch import load_file

    if not path.is_file():
        raise EncoderError(f"encoder {name!r}", f"its fitted state {path}", "no such file",
                           "rerun the study's embed stage")
    return load_file(str(path))
