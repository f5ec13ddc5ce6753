"""Image encoders: chips (B, C, H, W) float32 reflectance with NaN for invalid pixels -> (B, D) embeddings.

* :class:`SpectralStats` — per-band mean, std and 10/50/90 % quantiles of the valid pixels, plus mean and
  std of NDVI, NDWI and NDBI when blue..swir2 are present. Parameter-free, cheap, interpretable.
* :class:`TimmEncoder` — a timm ViT or ResNet with ``in_chans`` = the chip bands and no classifier head
  (``num_classes=0``), pooled. Chips are standardised with fixed reflectance statistics, invalid pixels set
  to 0 after standardisation, and resized to the model's input size with antialiased bilinear
  interpolation when their size differs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LANDSAT_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
INDICES = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir"), "ndbi": ("swir1", "nir")}
QUANTILES = (0.1, 0.5, 0.9)


class Encoder(nn.Module):
    """Base class: a named module with ``in_chans``, ``embed_dim`` and an input size (None = any)."""

    family = "base"

    def __init__(self, name: str, in_chans: int):
        super().__init__()
        self.name = name
        self.in_chans = in_chans

    embed_dim: int
    input_size: int | None = None

    def config(self) -> dict[str, Any]:
        return {}


class SpectralStats(Encoder):
    """Spectral-statistics encoder (see module docstring)."""

    family = "spectral"

    def __init__(self, name: str = "spectral", in_chans: int = 6, band_names: Sequence[str] | None = None):
        super().__init__(name, in_chans)
        if band_names is None:
            band_names = LANDSAT_BANDS if in_chans == 6 else tuple(f"band{i + 1}" for i in range(in_chans))
        self.band_names = tuple(band_names)
        self.indices = [(k, self.band_names.index(a), self.band_names.index(b))
                        for k, (a, b) in INDICES.items() if a in self.band_names and b in self.band_names]
        self.embed_dim = in_chans * (2 + len(QUANTILES)) + 2 * len(self.indices)

    def feature_names(self) -> list[str]:
        names = []
        for b in self.band_names:
            names += [f"{b}_mean", f"{b}_std"] + [f"{b}_q{int(q * 100)}" for q in QUANTILES]
        for k, _, _ in self.indices:
            names += [f"{k}_mean", f"{k}_std"]
        return names

    def config(self) -> dict[str, Any]:
        return {"band_names": list(self.band_names)}

    @staticmethod
    def _mean_std(v: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cnt = valid.sum(-1).clamp(min=1)
        mean = torch.where(valid, v, 0).sum(-1) / cnt
        var = torch.where(valid, (v - mean[..., None]) ** 2, 0).sum(-1) / cnt
        return mean, var.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1).float()
        valid = torch.isfinite(flat)
        mean, std = self._mean_std(flat, valid)
        q = torch.nanquantile(flat, torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device), dim=-1)
        per_band = torch.cat([mean[..., None], std[..., None], q.permute(1, 2, 0)], dim=-1).reshape(b, -1)
        parts = [per_band]
        for _, i, j in self.indices:
            num = flat[:, i] - flat[:, j]
            den = flat[:, i] + flat[:, j]
            idx = num / den.where(den.abs() > 1e-6, torch.full_like(den, float("nan")))
            m, s = self._mean_std(idx, torch.isfinite(idx))
            parts.append(torch.stack([m, s], dim=-1))
        out = torch.cat(parts, dim=-1)
        return torch.nan_to_num(out, nan=0.0)


class TimmEncoder(Encoder):
    """A timm backbone (ViT or ResNet) used as a frozen, pooled feature extractor."""

    # Typical surface-reflectance mean / spread, used to standardise inputs of any band count.
    REFL_MEAN = 0.15
    REFL_STD = 0.10

    def __init__(self, name: str, family: str, in_chans: int, img_size: int, model: nn.Module,
                 embed_dim: int, cfg: dict[str, Any]):
        super().__init__(name, in_chans)
        self.family = family
        self.input_size = img_size
        self.model = model
        self.embed_dim = embed_dim
        self._cfg = cfg

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double() if x.dtype == torch.float64 else x.float()  # float64 kept for reference checks
        x = (x - self.REFL_MEAN) / self.REFL_STD
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))


def build_vit(name: str, in_chans: int, img_size: int = 32, patch_size: int = 8, embed_dim: int = 64,
              depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0) -> TimmEncoder:
    from timm.models.vision_transformer import VisionTransformer

    from .errors import EncoderError

    if img_size % patch_size:
        raise EncoderError(f"encoder {name!r}: img_size", f"a multiple of patch_size ({patch_size})",
                           str(img_size), f"use {max(patch_size, round(img_size / patch_size) * patch_size)}")
    if embed_dim % num_heads:
        raise EncoderError(f"encoder {name!r}: num_heads", f"a divisor of embed_dim ({embed_dim})", str(num_heads),
                           "choose heads that divide the embedding width")

    model = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                              global_pool="avg", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                              mlp_ratio=mlp_ratio)
    cfg = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
               mlp_ratio=mlp_ratio)
    return TimmEncoder(name, "vit", in_chans, img_size, model, embed_dim, cfg)


def build_resnet(name: str, in_chans: int, img_size: int = 32, layers: Sequence[int] = (1, 1, 1, 1),
                 base_width: int = 16) -> TimmEncoder:
    from timm.models.resnet import BasicBlock, ResNet

    channels = tuple(base_width * 2 ** i for i in range(len(layers)))
    # a deep stem (three 3x3 convolutions) whose width follows base_width, so that scaling the width
    # scales every layer (timm's default 7x7 stem is fixed at 64 channels)
    model = ResNet(block=BasicBlock, layers=tuple(layers), in_chans=in_chans, num_classes=0, stem_type="deep",
                   stem_width=max(4, base_width // 2), channels=channels, global_pool="avg")
    cfg = dict(img_size=img_size, layers=list(layers), base_width=base_width)
    return TimmEncoder(name, "resnet", in_chans, img_size, model, channels[-1], cfg)


def build_regnet(name: str, in_chans: int, img_size: int = 32, depth: int = 6, w0: int = 16, wa: float = 16.0,
                 wm: float = 2.0, group_size: int = 8) -> TimmEncoder:
    """A timm RegNet (Radosavovic et al. 2020) from its design-space parameters, global-average pooled."""
    from timm.models.regnet import RegNet, RegNetCfg

    from .errors import EncoderError

    cfg_r = RegNetCfg(depth=depth, w0=w0, wa=wa, wm=wm, group_size=group_size, stem_width=max(8, w0 // 2))
    try:
        model = RegNet(cfg_r, in_chans=in_chans, num_classes=0, global_pool="avg")
    except AssertionError:
        raise EncoderError(f"encoder {name!r}", "RegNet parameters (depth, w0, wa, wm) that give 4 stages",
                           f"depth={depth}, w0={w0}, wa={wa}, wm={wm}", "e.g. depth 6, w0 16, wa 16, wm 2") from None
    cfg = dict(img_size=img_size, depth=depth, w0=w0, wa=wa, wm=wm, group_size=group_size)
    return TimmEncoder(name, "regnet", in_chans, img_size, model, model.num_features, cfg)
