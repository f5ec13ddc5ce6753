"""Image encoders: chips (B, C, H, W) float32 reflectance with NaN for invalid pixels -> (B, D) embeddings.

* :class:`SpectralStats` — per-band mean, std and 10/50/90 % quantiles of the valid pixels, plus mean and
  std of NDVI, NDWI and NDBI when blue..swir2 are present. Parameter-free, cheap, interpretable.
* :class:`RandomConvFeatures` — MOSAIKS random convolutional features: whitened patches of the study's own
  chips as kernels, ReLU of both signs, average pooling (fitted on imagery only).
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

from .errors import EncoderError

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


class RandomConvFeatures(Encoder):
    """Random convolutional features (MOSAIKS; Rolf et al., *A generalizable and accessible approach to machine
    learning with global satellite imagery*, Nature Communications 2021).

    ``n_features / 2`` kernels are ``patch_size`` x ``patch_size`` patches (all bands) sampled at random from
    the study's own chips (:meth:`fit_patches`, imagery only, never outcomes) and ZCA-whitened with statistics
    of a larger patch sample. A chip's feature k is the spatial mean of ReLU(z_k - bias) and of ReLU(-z_k - bias),
    where z_k is the convolution of the whitened chip with kernel k: both signs, as in MOSAIKS. Whitening
    is folded into the kernels: for ZCA matrix A (symmetric) and patch mean mu,
    <A(x - mu), A(p - mu)> = x . (A A (p - mu)) - mu . (A A (p - mu)), one convolution and one offset per
    kernel. Invalid (NaN) pixels are replaced by the band means of the sample before convolving.
    Deterministic for a seed and a chip sample.
    """

    family = "rcf"

    def __init__(self, name: str = "rcf", in_chans: int = 6, n_features: int = 256, patch_size: int = 3,
                 bias: float = 1.0, whiten_eps: float = 1e-2, whiten_patches: int = 20000):
        super().__init__(name, in_chans)
        if n_features < 2 or n_features % 2:
            raise EncoderError(f"encoder {name!r}: n_features", "an even number >= 2 (two signs per kernel)",
                               str(n_features), "e.g. 256")
        if patch_size < 1:
            raise EncoderError(f"encoder {name!r}: patch_size", "at least 1 pixel", str(patch_size), "e.g. 3")
        self.n_features, self.patch_size, self.bias = int(n_features), int(patch_size), float(bias)
        self.whiten_eps, self.whiten_patches = float(whiten_eps), int(whiten_patches)
        self.embed_dim = self.n_features
        k = self.n_features // 2
        self.register_buffer("weight", torch.zeros(k, in_chans, patch_size, patch_size))
        self.register_buffer("offset", torch.zeros(k))
        self.register_buffer("band_fill", torch.zeros(in_chans))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "patch_size": self.patch_size, "bias": self.bias,
                "whiten_eps": self.whiten_eps, "whiten_patches": self.whiten_patches}

    def feature_names(self) -> list[str]:
        k = self.n_features // 2
        return [f"rcf{i}_pos" for i in range(k)] + [f"rcf{i}_neg" for i in range(k)]

    def fit_patches(self, chips, seed: int = 0) -> "RandomConvFeatures":
        """Sample the kernels and the whitening from ``chips`` (an array N x C x H x W, or a list of them with
        different sizes, e.g. one per scale; NaN invalid): only patches without invalid pixels are used.

        Raises:
            EncoderError: when the chips are smaller than a patch or hold too few valid patches.
        """
        import numpy as np

        arrays = [np.asarray(a, dtype=np.float32) for a in (chips if isinstance(chips, (list, tuple)) else [chips])]
        p, c = self.patch_size, self.in_chans
        for arr in arrays:
            if arr.ndim != 4 or arr.shape[1] != c or arr.shape[2] < p or arr.shape[3] < p:
                raise EncoderError(f"encoder {self.name!r}", f"chips of {c} bands, at least {p} x {p} px",
                                   f"shape {arr.shape}", "use a smaller patch_size or larger chips")
        k = self.n_features // 2
        rng = np.random.default_rng(seed)
        want = max(self.whiten_patches, 4 * k)
        which = rng.integers(0, len(arrays), 4 * want)  # each array (scale) equally likely
        draws = []
        for a, arr in enumerate(arrays):
            m = int((which == a).sum())
            n, _, h, w = arr.shape
            idx, ys, xs = rng.integers(0, n, m), rng.integers(0, h - p + 1, m), rng.integers(0, w - p + 1, m)
            draws += [arr[i, :, y:y + p, x:x + p].reshape(-1) for i, y, x in zip(idx, ys, xs)]
        patches = np.stack(draws)[rng.permutation(len(draws))]
        patches = patches[np.isfinite(patches).all(axis=1)].astype(np.float64)
        if len(patches) < 2 * k:
            raise EncoderError(f"encoder {self.name!r}", f"at least {2 * k} fully valid {p} x {p} patches",
                               f"{len(patches)} in {4 * want} draws", "tile scenes with fewer invalid pixels")
        white, kernels = patches[:want], patches[-k:]  # kernels drawn apart from the whitening sample
        mu = white.mean(axis=0)
        cov = np.cov(white - mu, rowvar=False)
        s, u = np.linalg.eigh(cov)
        zca = (u / np.sqrt(np.maximum(s, 0) + self.whiten_eps)) @ u.T
        eff = (kernels - mu) @ zca @ zca  # A A (p - mu), A symmetric
        self.weight.copy_(torch.from_numpy(eff.reshape(k, c, p, p)).float())
        self.offset.copy_(torch.from_numpy(eff @ mu).float())
        self.band_fill.copy_(torch.from_numpy(mu.reshape(c, p, p).mean(axis=(1, 2))).float())
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise EncoderError(f"encoder {self.name!r}", "kernels sampled from the study's chips (fit_patches)",
                               "an unfitted encoder", "call fit_patches(chips) first (the embed stage does)")
        x = x.float()
        x = torch.where(torch.isfinite(x), x, self.band_fill.view(1, -1, 1, 1).to(x.dtype))
        z = F.conv2d(x, self.weight) - self.offset.view(1, -1, 1, 1)
        return torch.cat([F.relu(z - self.bias).mean(dim=(2, 3)), F.relu(-z - self.bias).mean(dim=(2, 3))], dim=1)
