"""Self-supervised pretraining of a timm encoder on unlabelled chips: VICReg (Bardes, Ponce & LeCun,
*VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning*, ICLR 2022).

Why VICReg: it learns from two augmented views of a chip without negatives (SimCLR needs large batches to
find them), without a momentum teacher (BYOL/DINO/MoCo v3 need one and are sensitive to its schedule at
a few hundred steps), and without a decoder (MAE); its three terms are plain statistics of a batch, so it
trains at batch 64-256 on a CPU in a minute, and one objective serves every family (ViT, ResNet, RegNet),
so an encoder table compares architectures, not objectives.

Loss of the projections z1, z2 (B x P) of the two views:
``25 * mean((z1 - z2)^2) + 25 * (v(z1) + v(z2)) + (c(z1) + c(z2))`` with
``v(z) = mean_j relu(1 - sqrt(var_j(z) + 1e-4))`` (each dimension keeps a spread: no collapse) and
``c(z) = sum_{i != j} cov_ij(z)^2 / P`` (dimensions decorrelated) — the paper's coefficients.

Augmentations act on standardised reflectance and respect its physics (no colour jitter: a band's value is
a measurement, not a colour): a random resized crop (area share in ``crop_scale``, square pixels kept),
flips, optional 90-degree rotations, Gaussian per-pixel noise of ``noise_sd`` reflectance, and dropping
one band (set to the standardised mean, as an invalid pixel is). One affine resampling does crop, flips and
rotation. Rotations are off by default: scenes are north-up, and an encoder made invariant to rotating a
chip by 90 degrees cannot see orientation (field strips, roads along a valley), which can modify an effect.

Everything random comes from one seeded ``torch.Generator``; on the CPU (deterministic algorithms) a seed
gives bitwise the same weights. On a GPU the encoder runs under bf16 autocast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import TimmEncoder
from .errors import EncoderError
from .ssl_spec import AUGMENTATIONS


@dataclass(frozen=True)
class AugmentSpec:
    """Which augmentations, and how strong (reflectance units for ``noise_sd``)."""

    kinds: tuple[str, ...] = ("flip", "crop", "noise", "band_drop")
    crop_scale: tuple[float, float] = (0.5, 1.0)
    noise_sd: float = 0.01
    band_drop: float = 0.2

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in AUGMENTATIONS]
        if unknown:
            raise EncoderError("pretrain.augment", f"names among {list(AUGMENTATIONS)}", f"{unknown}",
                               "remove or rename them")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise EncoderError("pretrain.crop_scale", "[min, max] area shares with 0 < min <= max <= 1",
                               str(list(self.crop_scale)), "e.g. [0.5, 1.0]")


def augment(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator, refl_std: float) -> torch.Tensor:
    """One random view of a batch ``x`` (B, C, S, S) of standardised, finite chips."""
    b, c = x.shape[:2]
    dev, dt = x.device, x.dtype

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(dev, dt)

    kinds = set(spec.kinds)
    theta = torch.zeros(b, 2, 3, dtype=dt, device=dev)
    s = torch.ones(b, dtype=dt, device=dev)
    if "crop" in kinds:
        lo, hi = spec.crop_scale
        s = torch.sqrt(lo + (hi - lo) * rand(b))  # side share of the crop
        theta[:, 0, 2] = (2 * rand(b) - 1) * (1 - s)
        theta[:, 1, 2] = (2 * rand(b) - 1) * (1 - s)
    lin = torch.diag_embed(torch.stack([s, s], dim=1))
    if "flip" in kinds:
        signs = torch.where(rand(b, 2) < 0.5, -1.0, 1.0).to(dt)
        lin = lin * signs[:, None, :]
    if "rot90" in kinds:
        k = (rand(b) * 4).floor().long().clamp(max=3)
        ang = k.to(dt) * (math.pi / 2)
        cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        lin = rot @ lin
    theta[:, :, :2] = lin
    if kinds & {"crop", "flip", "rot90"}:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if "noise" in kinds and spec.noise_sd > 0:
        x = x + torch.randn(x.shape, generator=gen).to(dev, dt) * (spec.noise_sd / refl_std)
    if "band_drop" in kinds and spec.band_drop > 0 and c > 1:
        drop = rand(b) < spec.band_drop
        band = (rand(b) * c).floor().long().clamp(max=c - 1)
        mask = torch.ones(b, c, 1, 1, dtype=dt, device=dev)
        mask[drop, band[drop]] = 0.0
        x = x * mask
    return x


def projector(dim_in: int, dim: int) -> nn.Sequential:
    """VICReg's expander: three linear layers, batch norm and ReLU between them."""
    return nn.Sequential(nn.Linear(dim_in, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim: float = 25.0, var: float = 25.0,
                cov: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """VICReg's loss of two projections (B x P) and its three terms (see module docstring)."""
    if z1.dtype in (torch.float16, torch.bfloat16):  # the loss in float32 under autocast
        z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)

    def variance(z):
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()

    def covariance(z):
        zc = z - z.mean(dim=0)
        c = (zc.T @ zc) / (z.shape[0] - 1)
        off = c - torch.diag(torch.diag(c))
        return (off ** 2).sum() / z.shape[1]

    v = variance(z1) + variance(z2)
    c = covariance(z1) + covariance(z2)
    loss = sim * inv + var * v + cov * c
    return loss, {"invariance": float(inv.detach()), "variance": float(v.detach()), "covariance": float(c.detach())}


@dataclass
class PretrainResult:
    """What a pretraining run did: per-step losses, wall time, images seen, device and precision."""

    losses: list[float]
    seconds: float
    images_seen: int
    device: str
    precision: str
    terms: dict[str, float] = field(default_factory=dict)


def pretrain_vicreg(enc: TimmEncoder, pools: Sequence[torch.Tensor], *, steps: int, batch_size: int, lr: float,
                    weight_decay: float, projector_dim: int, aug: AugmentSpec, seed: int,
                    device: torch.device, warmup: float = 0.1,
                    log: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train ``enc`` (in place) with VICReg on chips drawn uniformly from ``pools``.

    Args:
        enc: a timm encoder (:class:`models.encoders.TimmEncoder`).
        pools: one float32 tensor (N_i, C, H_i, W_i) of reflectance per scale (NaN = invalid); chips are
            standardised and resized to the encoder's input size once, then drawn with equal weight per chip.
        steps, batch_size, lr, weight_decay: AdamW with linear warm-up (``warmup`` share of the steps)
            then cosine decay.
        projector_dim: width of the expander (discarded after training).
        aug: the augmentations.
        seed: seeds the projector's initialisation, the batches and the augmentations.
        device: CPU (float32, deterministic algorithms) or CUDA (bf16 autocast).

    Raises:
        EncoderError: an encoder that is not a timm backbone, no chips, or a bad budget.
    """
    if not isinstance(enc, TimmEncoder):
        raise EncoderError(f"pretrain encoder {getattr(enc, 'name', enc)!r}", "a timm encoder (vit, resnet, regnet)",
                           f"family {getattr(enc, 'family', '?')!r}",
                           "pretrain only learned encoders; spectral and rcf need no training")
    if steps < 1 or batch_size < 2:
        raise EncoderError("pretrain", "steps >= 1 and batch_size >= 2", f"steps {steps}, batch_size {batch_size}",
                           "raise them")
    with torch.no_grad():
        prepared = torch.cat([enc.prepare(p.float()) for p in pools if len(p)])
    if len(prepared) < batch_size:
        raise EncoderError("pretrain chips", f"at least batch_size ({batch_size}) chips",
                           f"{len(prepared)} valid chips", "raise pretrain.positions or lower pretrain.batch_size")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gpu = device.type == "cuda"
    torch.use_deterministic_algorithms(not gpu, warn_only=True)
    head = projector(enc.embed_dim, projector_dim)
    enc.to(device).train()
    head.to(device).train()
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(round(warmup * steps)))

    def lr_at(i: int) -> float:
        if i < n_warm:
            return lr * (i + 1) / n_warm
        t = (i - n_warm) / max(1, steps - n_warm)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    losses: list[float] = []
    terms: dict[str, float] = {}
    data = prepared.to(device) if gpu else prepared
    t0 = time.perf_counter()
    for i in range(steps):
        idx = torch.randint(0, len(prepared), (batch_size,), generator=gen)
        x = data[idx.to(data.device)]
        v1 = augment(x, aug, gen, enc.REFL_STD)
        v2 = augment(x, aug, gen, enc.REFL_STD)
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
            z = head(enc.model(torch.cat([v1, v2])))
        loss, terms = vicreg_loss(z[:batch_size], z[batch_size:])
        if not torch.isfinite(loss):
            raise EncoderError(f"pretrain {enc.name!r}", "a finite loss", f"{float(loss)} at step {i + 1}",
                               "lower pretrain.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(i, losses[-1])
    if gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    enc.to("cpu").eval()
    return PretrainResult(losses, seconds, steps * batch_size, device.type, "bf16" if gpu else "float32", terms)
