"""Batched, device-aware encoding of chips.

``embed_chips`` runs an encoder over a (locations, bands, px, px) chip array in batches under
``torch.inference_mode``. On a GPU it uses bf16 autocast and channels-last memory; on the CPU it runs in
float32 with deterministic algorithms, so CPU embeddings are bitwise reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from models import Encoder
from models.errors import EncoderError


def choose_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EncoderError("embed.device", "'auto', 'cpu' or 'cuda[:N]'", repr(device), "fix the device name") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError("embed.device", "an available device", "'cuda' without a visible GPU",
                           "use device: auto or cpu")
    return dev


def embed_chips(encoder: Encoder, chips: np.ndarray, batch_size: int = 64, device: str = "auto",
                progress: bool = False, desc: str = "embedding") -> np.ndarray:
    """Encode chips into a (locations, embed_dim) float32 array.

    Raises:
        EncoderError: when the chip band count differs from the encoder's ``in_chans``.
    """
    if chips.ndim != 4:
        raise EncoderError("chips", "an array (locations, bands, px, px)", f"shape {chips.shape}",
                           "pass chips as written by the tile stage")
    if chips.shape[1] != encoder.in_chans:
        raise EncoderError(f"encoder {encoder.name!r}", f"{encoder.in_chans} input bands",
                           f"chips with {chips.shape[1]} bands", "create the encoder with in_chans = chip bands")
    dev = choose_device(device)
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    enc = encoder.to(dev).eval()
    gpu = dev.type == "cuda"
    if gpu:
        enc = enc.to(memory_format=torch.channels_last)
    out = np.empty((chips.shape[0], encoder.embed_dim), dtype=np.float32)
    starts = range(0, chips.shape[0], batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=desc, unit="batch")
    with torch.inference_mode():
        for s in starts:
            x = torch.from_numpy(np.ascontiguousarray(chips[s: s + batch_size]))
            if gpu:
                x = x.pin_memory().to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=encoder.family != "spectral"):
                    y = enc(x)
            else:
                y = enc(x)
            out[s: s + len(x)] = y.float().cpu().numpy()
    return out


def embed_study(tile_dir: str | os.PathLike, cfg, seed: int, out_dir: str | os.PathLike,
                progress: bool = True) -> dict[tuple[str, str], np.ndarray]:
    """Embed every scale of a chip store with every encoder of ``cfg`` (an ``EmbedConfig``).

    Writes ``<encoder>/<scale>.npy`` (locations x dim, rows in the chip store's location order),
    ``<encoder>/feature_names.json`` and ``<encoder>/card.json`` (name, family, config, params, digests).
    """
    from models import create_encoder, encoder_card

    from .artifacts import write_json, write_npy
    from .tiling import read_chip_store

    locations, chips, _ = read_chip_store(tile_dir)
    out = Path(out_dir)
    result = {}
    bands = next(iter(chips.values())).shape[1]
    for name in cfg.encoders:
        enc = create_encoder(name, in_chans=bands, seed=seed)
        for scale, arr in chips.items():
            emb = embed_chips(enc, arr, cfg.batch_size, cfg.device, progress=progress, desc=f"{name}:{scale}")
            write_npy(out / name / f"{scale}.npy", emb)
            result[(name, scale)] = emb
        names = enc.feature_names() if hasattr(enc, "feature_names") else [f"d{i}" for i in range(enc.embed_dim)]
        write_json(out / name / "feature_names.json", names)
        write_json(out / name / "card.json", {**encoder_card(enc), "n_locations": len(locations),
                                              "scales": list(chips)})
    return result
