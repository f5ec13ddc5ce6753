"""GPU path (opt in with ``-m gpu``; skipped without CUDA): the embeddings computed on the GPU in bf16
autocast, channels-last, agree with a float64 CPU reference of the same encoder, every row is written, and the
scaling study's timer runs there. These tests import neither rasterio nor the tiling code, so they also run
with ``--noconftest`` on a machine that has only torch, timm and zarr."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models import create_encoder
from pipeline.imagery.embedding import embed_chips

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _reference(enc, chips: np.ndarray) -> np.ndarray:
    ref = copy.deepcopy(enc).double().cpu().eval()
    with torch.inference_mode():
        return ref(torch.from_numpy(chips).double()).numpy()


@pytest.mark.parametrize("name,tol", [("spectral", 1e-5), ("vit_tiny", 3e-2), ("resnet_tiny", 3e-2),
                                      ("regnet_tiny", 3e-2)])
def test_gpu_embeddings_match_float64_reference(name, tol):
    rng = np.random.default_rng(7)
    chips = rng.uniform(0, 0.4, (70, 6, 32, 32)).astype(np.float32)  # 70: the last batch is partial
    enc = create_encoder(name, in_chans=6, seed=0)
    ref = _reference(enc, chips)
    got = embed_chips(copy.deepcopy(enc), chips, batch_size=32, device="cuda")
    assert got.shape == ref.shape and np.isfinite(got).all()
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < tol, f"{name}: relative error {rel:.2e} against the float64 reference"
    # every row is computed from its own chip: a row-wise check catches misplaced or unwritten rows
    row_rel = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    assert row_rel.max() < 5 * tol


def test_gpu_embeddings_from_zarr_equal_in_memory(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(3)
    chips = rng.uniform(0, 0.4, (100, 6, 32, 32)).astype(np.float32)
    z = zarr.open_group(str(tmp_path / "chips.zarr"), mode="w").create_array(
        "s", shape=chips.shape, chunks=(48,) + chips.shape[1:], dtype="float32")
    z[:] = chips
    enc = create_encoder("vit_tiny", in_chans=6, seed=0)
    a = embed_chips(enc, chips, batch_size=16, device="cuda")
    b = embed_chips(enc, z, batch_size=16, device="cuda", num_workers=1)
    np.testing.assert_array_equal(a, b)


def test_gpu_scaling_timer_runs():
    from pipeline.procedures.scaling import time_forward

    enc = create_encoder("resnet_tiny", in_chans=6, seed=0)
    ips = time_forward(enc, 16, torch.device("cuda"), repeats=2)
    assert np.isfinite(ips) and ips > 0


def test_gpu_pretraining_runs_in_bf16_and_lowers_its_loss():
    from models.ssl import AugmentSpec, pretrain_vicreg

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    chips = np.stack([0.15 + 0.08 * np.sin((xx if rng.random() < 0.5 else yy) * 0.8 + rng.uniform(0, 6))[None]
                      * np.ones((6, 1, 1)) + rng.normal(0, 0.01, (6, 16, 16)) for _ in range(256)]).astype(np.float32)
    enc = create_encoder("vit_tiny", in_chans=6, seed=0)
    res = pretrain_vicreg(enc, [torch.from_numpy(chips)], steps=60, batch_size=64, lr=5e-3, weight_decay=0.0,
                          projector_dim=64, aug=AugmentSpec(), seed=0, device=torch.device("cuda"))
    assert res.device == "cuda" and res.precision == "bf16" and np.isfinite(res.losses).all()
    assert np.mean(res.losses[-10:]) < np.mean(res.losses[:10])
    assert next(enc.parameters()).device.type == "cpu"  # handed back on the CPU, ready to save
