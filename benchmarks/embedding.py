"""Embedding throughput: our path (Zarr chip store -> DataLoader -> encoder) against the bare encoder forward
on the same batches already in memory, in one process. Target: >= 0.9x the bare forward.

    python benchmarks/embedding.py [--encoder vit_scaling_base] [--n 2048] [--workers 1] [--device auto]

On a GPU both run in bf16 autocast, as the pipeline does, and the bf16 speed-up over a float32 bare
forward is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import create_encoder
from pipeline.core.artifacts import chip_codec
from pipeline.imagery.embedding import choose_device, embed_chips, iter_blocks, prepare_encoder

CODECS = {"none": lambda: None, "store": chip_codec}


def bare_forward(enc, batches, device, bf16):
    """The encoder's forward over in-memory batches; on a GPU channels-last, in bf16 autocast or float32."""
    enc = prepare_encoder(enc, device)
    with torch.inference_mode():
        for x in batches:
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    enc(x)
            else:
                enc(x)
        if device.type == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="vit_scaling_base")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader processes (0: reader threads)")
    ap.add_argument("--threads", type=int, default=0, help="reader threads (0: one per core, at most 8)")
    ap.add_argument("--chunk", type=int, default=64, help="locations per Zarr chunk")
    ap.add_argument("--codec", choices=sorted(CODECS), default="store", help="the chip store's codec or none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import zarr

    device = choose_device(args.device)
    rng = np.random.default_rng(0)
    chips = rng.uniform(0, 0.4, (args.n, args.bands, args.px, args.px)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        z = zarr.open_group(str(Path(tmp) / "chips.zarr"), mode="w").create_array(
            "s", shape=chips.shape, chunks=(args.chunk,) + chips.shape[1:], dtype="float32",
            compressors=CODECS[args.codec]())
        z[:] = chips
        enc = create_encoder(args.encoder, in_chans=args.bands, seed=0)
        batches = [torch.from_numpy(chips[i: i + args.batch]) for i in range(0, args.n, args.batch)]
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        gpu = device.type == "cuda"  # the pipeline runs bf16 autocast on a GPU: compare like with like
        bare_forward(enc, batches[:2], device, gpu)  # warm-up
        embed_chips(enc, z[: args.batch * 2], args.batch, str(device), num_workers=args.workers,
                    read_threads=args.threads)  # warm-up
        bare, ours, read, decode, decode_zarr = [], [], [], [], []
        for _ in range(args.repeats):  # alternate, so that drifts of the machine hit both alike
            t0 = time.perf_counter()
            bare_forward(enc, batches, device, gpu)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            embed_chips(enc, z, args.batch, str(device), num_workers=args.workers, read_threads=args.threads)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in iter_blocks(z, args.batch, gpu, args.workers, args.threads):
                pass
            read.append(time.perf_counter() - t0)
            for direct, times in ((True, decode), (False, decode_zarr)):
                t0 = time.perf_counter()
                for _ in iter_blocks(z, args.batch, False, args.workers, args.threads, direct=direct):
                    pass
                times.append(time.perf_counter() - t0)
        t_bare, t_ours, t_read = float(np.median(bare)), float(np.median(ours)), float(np.median(read))
        print(f"device {device}; encoder {args.encoder}; {args.n} chips {args.bands}x{args.px}x{args.px}; "
              f"{'bf16 autocast; ' if gpu else ''}batch {args.batch}; Zarr chunk {args.chunk} ({args.codec}); "
              f"loader workers {args.workers}; reader threads {args.threads or 'auto'}; median of {args.repeats}")
        print(f"bare forward (in memory): {args.n / t_bare:9.1f} images/s")
        print(f"store -> loader -> model: {args.n / t_ours:9.1f} images/s   ratio {t_bare / t_ours:.2f}")
        print(f"store -> loader (no model): {args.n / t_read:7.1f} images/s   (the reading bound)")
        print(f"  decoding alone (direct):  {args.n / float(np.median(decode)):7.1f} images/s   "
              f"(through Zarr: {args.n / float(np.median(decode_zarr)):.1f})")
        if gpu:
            fp32 = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                bare_forward(enc, batches, device, False)
                fp32.append(time.perf_counter() - t0)
            t_fp32 = float(np.median(fp32))
            print(f"bare forward float32:     {args.n / t_fp32:9.1f} images/s   bf16 speed-up {t_fp32 / t_bare:.2f}x")


if __name__ == "__main__":
    main()
