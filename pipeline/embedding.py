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


class ChipBatches(torch.utils.data.Dataset):
    """Blocks of chips read from an array-like store (NumPy or Zarr).

    Item i holds rows [i*r, (i+1)*r) with r the store's chunk length along locations (at least the batch
    size), so that every compressed chunk is decoded exactly once.
    """

    def __init__(self, chips, batch_size: int):
        self.chips = chips
        chunk = getattr(chips, "chunks", None)
        rows = int(chunk[0]) if chunk else batch_size
        self.rows = max(batch_size, rows - rows % batch_size if rows >= batch_size else rows)

    def __len__(self) -> int:
        return (self.chips.shape[0] + self.rows - 1) // self.rows

    def __getitem__(self, i: int) -> torch.Tensor:
        s = i * self.rows
        return torch.from_numpy(np.ascontiguousarray(self.chips[s: s + self.rows], dtype=np.float32))


def _prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (reading overlaps compute)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in iterable:
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def embed_chips(encoder: Encoder, chips, batch_size: int = 64, device: str = "auto", num_workers: int = 0,
                progress: bool = False, desc: str = "embedding") -> np.ndarray:
    """Encode chips (NumPy or Zarr array, locations x bands x px x px) into (locations, embed_dim) float32.

    Blocks are read by a DataLoader (``num_workers`` background processes; with 0, one background thread
    prefetches two blocks ahead; pinned memory on a GPU), so reading the chip store overlaps with the
    encoder's compute. On a GPU the encoder runs in bf16 autocast
    with channels-last memory; on the CPU in float32 with deterministic algorithms.

    Raises:
        EncoderError: when the chip band count differs from the encoder's ``in_chans``.
    """
    if len(chips.shape) != 4:
        raise EncoderError("chips", "an array (locations, bands, px, px)", f"shape {tuple(chips.shape)}",
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
    loader = torch.utils.data.DataLoader(ChipBatches(chips, batch_size), batch_size=None, shuffle=False,
                                         num_workers=num_workers, pin_memory=gpu,
                                         prefetch_factor=2 if num_workers else None,
                                         persistent_workers=False)
    batches = loader if num_workers else _prefetch(loader)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=desc, unit="block", total=len(loader))
    s = 0
    with torch.inference_mode():
        for block in batches:
            for x in block.split(batch_size):
                if gpu:
                    x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=encoder.family != "spectral"):
                        y = enc(x)
                else:
                    y = enc(x)
                out[s: s + len(x)] = y.float().cpu().numpy()
                s += len(x)
    return out


def _embed_rows(tile_dir: str, scale: str, name: str, in_chans: int, seed: int, start: int, stop: int,
                batch_size: int, device: str) -> np.ndarray:
    """Embed rows [start, stop) of one scale of a chip store: the unit of work of a Dask task."""
    import zarr

    from models import create_encoder

    chips = zarr.open_group(str(Path(tile_dir) / "chips.zarr"), mode="r")[scale]
    enc = create_encoder(name, in_chans=in_chans, seed=seed)
    return embed_chips(enc, chips[start:stop], batch_size, device)


def embed_study(tile_dir: str | os.PathLike, cfg, seed: int, out_dir: str | os.PathLike,
                progress: bool = True, client=None) -> dict[tuple[str, str], np.ndarray]:
    """Embed every scale of a chip store with every encoder of ``cfg`` (an ``EmbedConfig``).

    Writes ``<encoder>/<scale>.npy`` (locations x dim, rows in the chip store's location order),
    ``<encoder>/feature_names.json`` and ``<encoder>/card.json`` (name, family, config, params, digests).
    With a Dask ``client``, each scale is split into partitions of whole batches (aligned with the
    synchronous batches, so the embeddings are bitwise identical on the CPU); workers read the chip store
    from the shared filesystem.
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
            if client is not None:
                from .compute import run_ordered

                step = cfg.batch_size * max(1, 1024 // cfg.batch_size)
                parts = [(str(tile_dir), scale, name, bands, seed, s, min(s + step, arr.shape[0]), cfg.batch_size,
                          cfg.device) for s in range(0, arr.shape[0], step)]
                emb = np.concatenate(run_ordered(client, _embed_rows, parts), axis=0)
            else:
                emb = embed_chips(enc, arr, cfg.batch_size, cfg.device, num_workers=cfg.num_workers,
                                  progress=progress, desc=f"{name}:{scale}")
            write_npy(out / name / f"{scale}.npy", emb)
            result[(name, scale)] = emb
        names = enc.feature_names() if hasattr(enc, "feature_names") else [f"d{i}" for i in range(enc.embed_dim)]
        write_json(out / name / "feature_names.json", names)
        write_json(out / name / "card.json", {**encoder_card(enc), "n_locations": len(locations),
                                              "scales": list(chips)})
    return result
