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

from ..core.config import EmbedConfig


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


class DirectChunks:
    """Decode whole chunks of the chip store in the calling thread: read the chunk's file and
    Blosc-decompress it straight into the caller's buffer.

    Zarr's own reads pass through one event loop, which serialises reader threads (on a 16-core GPU
    machine, 8 threads decoded only 3x faster than one). This path applies only to the layout the tile
    stage writes (Zarr v3 on a local filesystem, codecs ``bytes`` (little-endian) + ``blosc``, float32,
    no sharding, chunks that split locations only); :meth:`create` returns None for anything else, and a
    chunk that was never written (fill value) falls back to Zarr.
    """

    def __init__(self, root: str, metadata, chunk_shape: tuple[int, ...]):
        self.root = root
        self.metadata = metadata
        self.chunk_shape = chunk_shape

    @classmethod
    def create(cls, chips) -> "DirectChunks | None":
        md = getattr(chips, "metadata", None)
        if md is None or getattr(md, "zarr_format", None) != 3:
            return None
        try:
            import numcodecs.blosc  # noqa: F401
            from zarr.codecs import BloscCodec, BytesCodec
            from zarr.storage import LocalStore
        except ImportError:
            return None
        codecs = tuple(getattr(md, "codecs", ()))
        if (not isinstance(chips.store, LocalStore) or len(codecs) != 2 or not isinstance(codecs[0], BytesCodec)
                or not isinstance(codecs[1], BloscCodec) or np.dtype(chips.dtype) != np.float32
                or getattr(codecs[0].endian, "value", "little") != "little"
                or tuple(chips.chunks[1:]) != tuple(chips.shape[1:])):
            return None
        return cls(str(Path(chips.store.root) / chips.path), md, tuple(int(c) for c in chips.chunks))

    def read_into(self, i: int, out: np.ndarray) -> bool:
        """Decode chunk ``i`` into ``out`` (C-contiguous float32 of the chunk's shape); False when the
        chunk has no file (never written) or does not decode to that size."""
        import numcodecs.blosc

        key = self.metadata.encode_chunk_key((i,) + (0,) * (len(self.chunk_shape) - 1))
        try:
            with open(os.path.join(self.root, key), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return False
        try:
            numcodecs.blosc.decompress(raw, out)
        except (RuntimeError, ValueError):
            return False
        return True


class ChipBatches(torch.utils.data.Dataset):
    """Blocks of chips read from an array-like store (NumPy or Zarr).

    Item i holds rows [i*r, (i+1)*r) with r the store's chunk length along locations (at least the batch
    size), so that every compressed chunk is decoded exactly once. When a block is exactly one chunk of
    the tile stage's store, it is decoded by :class:`DirectChunks` (``direct=False`` forces Zarr reads).
    """

    def __init__(self, chips, batch_size: int, direct: bool = True):
        self.chips = chips
        chunk = getattr(chips, "chunks", None)
        rows = int(chunk[0]) if chunk else batch_size
        self.rows = max(batch_size, rows - rows % batch_size if rows >= batch_size else rows)
        self.direct = DirectChunks.create(chips) if direct and chunk and self.rows == int(chunk[0]) else None

    def __len__(self) -> int:
        return (self.chips.shape[0] + self.rows - 1) // self.rows

    def block_rows(self, i: int) -> int:
        return min(self.rows, self.chips.shape[0] - i * self.rows)

    def read_into(self, i: int, out: np.ndarray) -> np.ndarray:
        """Block i decoded into ``out`` (float32, at least ``rows`` long); returns the filled view."""
        n = self.block_rows(i)
        if self.direct is not None and self.direct.read_into(i, out[: self.rows]):
            return out[:n]
        s = i * self.rows
        np.copyto(out[:n], np.asarray(self.chips[s: s + n]), casting="same_kind")
        return out[:n]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.direct is not None:
            out = np.empty((self.rows,) + tuple(self.chips.shape[1:]), dtype=np.float32)
            return torch.from_numpy(self.read_into(i, out))
        s = i * self.rows
        return torch.from_numpy(np.ascontiguousarray(self.chips[s: s + self.rows], dtype=np.float32))


def prepare_encoder(encoder: Encoder, dev: torch.device) -> Encoder:
    """Move ``encoder`` to ``dev`` in eval mode; channels-last memory on a GPU."""
    enc = encoder.to(dev).eval()
    if dev.type == "cuda":
        enc = enc.to(memory_format=torch.channels_last)
    return enc


def forward_batch(enc: Encoder, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """One batch through an encoder prepared by :func:`prepare_encoder`, the way the pipeline runs it: on a
    GPU channels-last with bf16 autocast (float32 for the spectral statistics, which are cheap and
    precision-sensitive); on the CPU in float32."""
    if dev.type != "cuda":
        return enc(x)
    x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=enc.family != "spectral"):
        return enc(x)


def _ordered_prefetch(fn, n_items: int, threads: int, depth: int):
    """Yield ``fn(0), ..., fn(n_items - 1)`` in order, computing up to ``depth`` items ahead on ``threads``
    threads (Zarr/Blosc decoding and NumPy copies release the GIL, so the reads run in parallel)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chip-reader") as pool:
        pending: deque = deque()
        nxt = 0
        try:
            while nxt < n_items or pending:
                while nxt < n_items and len(pending) < depth:
                    pending.append(pool.submit(fn, nxt))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def default_read_threads() -> int:
    """Reader threads when ``embed.read_threads`` is 0: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def iter_blocks(chips, batch_size: int, pin: bool = False, num_workers: int = 0, read_threads: int = 0,
                direct: bool = True):
    """Chunk-aligned blocks of ``chips`` as float32 tensors, in order, read ahead by ``read_threads``
    threads (0: :func:`default_read_threads`) or, with ``num_workers`` > 0, by DataLoader processes.

    With ``pin`` (for asynchronous copies to a GPU) the reader threads decode each block into one of a ring
    of pinned buffers allocated once (allocating pinned memory per block is slow and serialised by the
    driver). A block's buffer is reused once the next block is requested: finish the work that reads it
    (synchronise the device) before asking for the next one. ``direct`` (default) decodes the tile stage's
    chunks without Zarr's event loop (:class:`DirectChunks`).
    """
    dataset = ChipBatches(chips, batch_size, direct=direct)
    if num_workers:
        yield from torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                               pin_memory=pin, prefetch_factor=2, persistent_workers=False)
        return
    threads = read_threads or default_read_threads()
    depth = threads + 1
    if not pin:
        yield from _ordered_prefetch(dataset.__getitem__, len(dataset), threads, depth)
        return
    import queue

    free: queue.Queue = queue.Queue()
    with torch.inference_mode(False):  # the consumer may iterate in inference mode; the readers never do
        for _ in range(min(depth + 2, len(dataset))):
            buf = torch.empty((dataset.rows,) + tuple(chips.shape[1:]), dtype=torch.float32)
            free.put(buf.pin_memory() if torch.cuda.is_available() else buf)

    def read(i: int):
        buf = free.get()
        n = len(dataset.read_into(i, buf.numpy()))
        return buf[:n], buf

    held = None
    for view, buf in _ordered_prefetch(read, len(dataset), threads, depth):
        if held is not None:
            free.put(held)
        held = buf
        yield view


def embed_chips(encoder: Encoder, chips, batch_size: int = EmbedConfig.batch_size, device: str = EmbedConfig.device,
                num_workers: int = EmbedConfig.num_workers, progress: bool = False, desc: str = "embedding",
                read_threads: int = EmbedConfig.read_threads) -> np.ndarray:
    """Encode chips (NumPy or Zarr array, locations x bands x px x px) into (locations, embed_dim) float32.

    Chunk-aligned blocks of the store are read ahead of the encoder, so that reading overlaps compute: by
    ``read_threads`` threads (0: :func:`default_read_threads`), which decode blocks in parallel and, on a
    GPU, copy them into pinned memory; or, with ``num_workers`` > 0, by a DataLoader with that many
    processes. The encoder runs as :func:`forward_batch` runs it (bf16 autocast and channels-last on a
    GPU; float32 with deterministic algorithms on the CPU). Outputs come back to the host once per block.

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
    enc = prepare_encoder(encoder, dev)
    gpu = dev.type == "cuda"
    out = np.empty((chips.shape[0], encoder.embed_dim), dtype=np.float32)
    batches = iter_blocks(chips, batch_size, gpu, num_workers, read_threads)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=desc, unit="block", total=len(ChipBatches(chips, batch_size)))
    s = 0
    with torch.inference_mode():
        for block in batches:
            ys = [forward_batch(enc, x, dev) for x in block.split(batch_size)]
            y = torch.cat(ys) if len(ys) > 1 else ys[0]
            out[s: s + len(y)] = y.float().cpu().numpy()
            s += len(y)
    return out
