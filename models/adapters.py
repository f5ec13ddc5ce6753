"""Published weights from local files: SSL4EO-L Landsat checkpoints and CLIP vision towers.

Nothing is downloaded: the user passes the path of a checkpoint fetched elsewhere. Files are read with
:func:`models.weights.read_state_dict` (safetensors, or ``torch.load(weights_only=True)``).

**SSL4EO-L** (Stewart et al., *SSL4EO-L: Datasets and Foundation Models for Landsat Imagery*, NeurIPS 2023
Datasets and Benchmarks; checkpoints as torchgeo publishes them: timm ``resnet18``, ``resnet50`` and
``vit_small_patch16_224`` state dicts, classifier keys optional). Each checkpoint belongs to one sensor
product with its own band order (:data:`SSL4EO_L_BANDS`). Our scenes carry named reflective bands (blue,
green, red, nir, swir1, swir2); the mapping from ours to theirs (:data:`BAND_SOURCES`) is:

* the six reflective bands map one to one (TM/ETM+ B1-B5, B7; OLI B2-B7; SR products likewise);
* OLI's coastal aerosol band (B1, 0.43-0.45 um) takes our blue; ETM+'s and OLI's panchromatic band (B8)
  takes the mean of our green and red (ETM+ pan 0.52-0.90 um; OLI pan 0.50-0.68 um);
* thermal (TM B6, ETM+ B6_VCID_1/2, TIRS B10/B11) and cirrus (OLI B9) bands have no reflective source: their
  input is 0, which is what dropping their kernel slices does.

The mapping is folded into the first convolution (ResNet ``conv1``) or patch embedding (ViT), so the model
reads our bands directly: for their channel k fed by our bands with weights M[k, b], the new kernel of our band
b is sum_k W[:, k] M[k, b]. A scene without a band that a reflective channel needs is refused, naming it.
Inputs: the checkpoints were trained on 8-bit images divided by 255 (torchgeo's SSL4EO-L transform); we feed
``reflectance / reflectance_max`` clipped to [0, 1] (default ``reflectance_max`` 1.0, i.e. 8-bit = reflectance
x 255). How each SSL4EO-L product was quantised to 8 bits is not stored with the weights: set
``reflectance_max`` to the product's stretch if it is known to differ. Chips are resized to 224 px.

**CLIP vision towers** in the Hugging Face ``CLIPVisionModel`` key layout (``vision_model.embeddings.*``,
``vision_model.encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``pre_layrnorm``, ``post_layernorm``; e.g.
CLIP-RSICD, the remote-sensing fine-tune used by Zhu, Jerzak & Daoud) are mapped onto a timm
VisionTransformer (pre-norm, class token, QuickGELU, head width 64) whose pooled output is the post-layernorm
class token, CLIP's ``pooler_output``. Width, depth, patch and image size are read from the tensors. CLIP sees
RGB: red, green and blue reflectance divided by ``display_max`` (default 0.3, a true-colour stretch), clipped
to [0, 1], then CLIP's pixel mean/std; other bands are not used.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import LANDSAT_BANDS, TimmEncoder
from .errors import EncoderError
from .weights import file_digest, read_state_dict

SSL4EO_L_BANDS: dict[str, tuple[str, ...]] = {
    "tm_toa": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
    "etm_toa": ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8"),
    "etm_sr": ("B1", "B2", "B3", "B4", "B5", "B7"),
    "oli_tirs_toa": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
    "oli_sr": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
}
"""Channel order of each SSL4EO-L product (Landsat band names as USGS / Earth Engine give them)."""

_TM = {"B1": {"blue": 1.0}, "B2": {"green": 1.0}, "B3": {"red": 1.0}, "B4": {"nir": 1.0}, "B5": {"swir1": 1.0},
       "B7": {"swir2": 1.0}, "B8": {"green": 0.5, "red": 0.5}}
_OLI = {"B1": {"blue": 1.0}, "B2": {"blue": 1.0}, "B3": {"green": 1.0}, "B4": {"red": 1.0}, "B5": {"nir": 1.0},
        "B6": {"swir1": 1.0}, "B7": {"swir2": 1.0}, "B8": {"green": 0.5, "red": 0.5}}
BAND_SOURCES: dict[str, dict[str, dict[str, float]]] = {
    "tm_toa": _TM, "etm_toa": _TM, "etm_sr": _TM, "oli_tirs_toa": _OLI, "oli_sr": _OLI}
"""For each product, each of its channels' sources among our band names (weights); channels absent here
(thermal, cirrus) get 0."""

SSL4EO_L_ARCHS = ("resnet18", "resnet50", "vit_small_patch16_224")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def band_matrix(sensor: str, band_names: Sequence[str]) -> torch.Tensor:
    """The (their channels x our bands) matrix that feeds an SSL4EO-L product's channels from our bands.

    Raises:
        EncoderError: unknown sensor, or a scene without a band that a reflective channel needs.
    """
    if sensor not in SSL4EO_L_BANDS:
        raise EncoderError("ssl4eo_l sensor", f"one of {list(SSL4EO_L_BANDS)}", repr(sensor),
                           "name the product the checkpoint was trained on (e.g. etm_sr for Landsat 7 SR)")
    ours = list(band_names)
    needed = sorted({b for src in BAND_SOURCES[sensor].values() for b in src} - set(ours))
    if needed:
        raise EncoderError(f"ssl4eo_l {sensor}: scene bands {ours}", f"bands named {sorted(needed)} as well",
                           f"{needed} missing", "select or rename the scene's bands (tile.bands) to blue, green, "
                           "red, nir, swir1, swir2")
    theirs = SSL4EO_L_BANDS[sensor]
    m = torch.zeros(len(theirs), len(ours))
    for k, name in enumerate(theirs):
        for b, w in BAND_SOURCES[sensor].get(name, {}).items():
            m[k, ours.index(b)] = w
    return m


def fold_input_mapping(weight: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A first-layer kernel (out, their channels, kh, kw) re-expressed on our bands: sum_k W[:, k] M[k, b]."""
    if weight.shape[1] != m.shape[0]:
        raise EncoderError("checkpoint first layer", f"{m.shape[0]} input channels (the product's bands)",
                           f"{weight.shape[1]}", "give the sensor product the checkpoint was trained on")
    return torch.einsum("okhw,kb->obhw", weight, m.to(weight.dtype))


def _strict_load(model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise EncoderError(path, f"a {what} checkpoint",
                           f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
                           f"{unexpected[:2]}), {len(mismatched)} with other shapes (e.g. {mismatched[:2]})",
                           "give a checkpoint of that architecture (or the matching arch/sensor)")
    model.load_state_dict(state, strict=True)


class PublishedEncoder(TimmEncoder):
    """A timm backbone with published weights and the input convention those weights expect."""

    def __init__(self, name: str, family: str, in_chans: int, img_size: int, model: nn.Module, embed_dim: int,
                 cfg: dict[str, Any], scale: float, rgb: Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(name, family, in_chans, img_size, model, embed_dim, cfg)
        self.scale = float(scale)
        self.rgb = None if rgb is None else list(rgb)
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double() if x.dtype == torch.float64 else x.float()
        if self.rgb is not None:
            x = x[:, self.rgb]
        x = torch.nan_to_num(x / self.scale, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x


def build_ssl4eo_l(name: str, in_chans: int, weights: str | os.PathLike | None = None, arch: str = "resnet18",
                   sensor: str = "etm_sr", band_names: Sequence[str] | None = None,
                   reflectance_max: float = 1.0) -> PublishedEncoder:
    """An SSL4EO-L checkpoint (``arch`` on ``sensor``) reading our bands ``band_names`` (module docstring).

    Raises:
        EncoderError: no weights path, unknown arch/sensor, missing bands, or a checkpoint of another
            architecture or band count.
    """
    import timm

    if weights is None:
        raise EncoderError(f"encoder {name!r}", "the path of a local SSL4EO-L checkpoint", "none",
                           "download it where there is network access and pass its path (embed.weights)")
    if arch not in SSL4EO_L_ARCHS:
        raise EncoderError(f"encoder {name!r}: arch", f"one of {list(SSL4EO_L_ARCHS)}", repr(arch),
                           "name the checkpoint's architecture")
    names = list(band_names) if band_names else (list(LANDSAT_BANDS) if in_chans == 6 else [])
    if len(names) != in_chans:
        raise EncoderError(f"encoder {name!r}: band_names", f"{in_chans} names (one per chip band)", str(names),
                           "give the scene's band names in order")
    m = band_matrix(sensor, names)
    model = timm.create_model(arch, pretrained=False, in_chans=m.shape[0], num_classes=0)
    state = {k: v for k, v in read_state_dict(weights).items() if not k.startswith(("fc.", "head."))}
    _strict_load(model, state, str(weights), f"{arch} ({sensor}, {m.shape[0]} bands)")
    first = model.conv1 if arch.startswith("resnet") else model.patch_embed.proj
    with torch.no_grad():
        new_w = fold_input_mapping(first.weight, m)
        conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding,
                         bias=first.bias is not None)
        conv.weight.copy_(new_w)
        if first.bias is not None:
            conv.bias.copy_(first.bias)
    if arch.startswith("resnet"):
        model.conv1 = conv
    else:
        model.patch_embed.proj = conv
    cfg = {"arch": arch, "sensor": sensor, "band_names": names, "reflectance_max": reflectance_max,
           "their_bands": list(SSL4EO_L_BANDS[sensor])}
    enc = PublishedEncoder(name, "ssl4eo_l", in_chans, 224, model, model.num_features, cfg, reflectance_max)
    enc.weights_digest = file_digest(weights)
    return enc


def clip_to_timm(state: dict[str, torch.Tensor], path: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Hugging Face ``CLIPVisionModel`` keys -> timm VisionTransformer keys, and the architecture they imply
    (width, depth, patch, image size, heads = width / 64).

    Raises:
        EncoderError: when the file does not hold a CLIP vision tower in that layout.
    """
    p = "vision_model."
    if not any(k.startswith(p) for k in state):
        state = {p + k: v for k, v in state.items()}  # a bare vision tower (no "vision_model." prefix)
    need = [p + "embeddings.patch_embedding.weight", p + "embeddings.class_embedding",
            p + "embeddings.position_embedding.weight", p + "pre_layrnorm.weight", p + "post_layernorm.weight"]
    absent = [k for k in need if k not in state]
    if absent:
        sample = sorted(state)[:3]
        raise EncoderError(path, "a CLIP vision tower in the Hugging Face CLIPVisionModel layout",
                           f"no {absent[0]} (keys like {sample})", "export the vision tower of a CLIP checkpoint")
    patch = state[need[0]]
    width, _, ps, _ = patch.shape
    n_pos = state[need[2]].shape[0]
    side = round((n_pos - 1) ** 0.5)
    if side * side != n_pos - 1:
        raise EncoderError(path, "position embeddings of a square grid plus a class token", f"{n_pos} positions",
                           "export an unmodified CLIP vision tower")
    depth = 0
    while f"{p}encoder.layers.{depth}.self_attn.q_proj.weight" in state:
        depth += 1
    out = {"cls_token": state[need[1]].reshape(1, 1, width), "pos_embed": state[need[2]].unsqueeze(0),
           "patch_embed.proj.weight": patch, "norm_pre.weight": state[need[3]],
           "norm_pre.bias": state[p + "pre_layrnorm.bias"], "norm.weight": state[need[4]],
           "norm.bias": state[p + "post_layernorm.bias"]}
    for i in range(depth):
        src, dst = f"{p}encoder.layers.{i}.", f"blocks.{i}."
        out[dst + "attn.qkv.weight"] = torch.cat([state[src + f"self_attn.{q}_proj.weight"] for q in "qkv"])
        out[dst + "attn.qkv.bias"] = torch.cat([state[src + f"self_attn.{q}_proj.bias"] for q in "qkv"])
        pairs = {"self_attn.out_proj": "attn.proj", "layer_norm1": "norm1", "layer_norm2": "norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for a, b in pairs.items():
            for t in ("weight", "bias"):
                out[f"{dst}{b}.{t}"] = state[f"{src}{a}.{t}"]
    arch = {"width": int(width), "depth": depth, "patch_size": int(ps), "img_size": int(side * ps),
            "num_heads": max(1, int(width) // 64), "mlp_dim": int(state[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0])
            if depth else 4 * int(width)}
    used = {k for k in state if k.startswith(p + "encoder.layers.") and int(k.split(".")[3]) < depth} | set(need) | {
        p + "pre_layrnorm.bias", p + "post_layernorm.bias", p + "embeddings.position_ids"}
    extra = [k for k in state if k not in used and not k.startswith(("text_model.", "visual_projection",
                                                                     "text_projection", "logit_scale"))]
    if extra:
        raise EncoderError(path, "only CLIP vision-tower keys", f"{len(extra)} others (e.g. {extra[:2]})",
                           "export the vision tower of a CLIP checkpoint")
    return out, arch


def build_clip(name: str, in_chans: int, weights: str | os.PathLike | None = None,
               band_names: Sequence[str] | None = None, display_max: float = 0.3,
               num_heads: int = 0) -> PublishedEncoder:
    """A CLIP vision tower from a local Hugging Face-layout checkpoint (module docstring); ``num_heads`` 0
    means width / 64 (every released CLIP ViT)."""
    from timm.layers import get_act_layer
    from timm.models.vision_transformer import VisionTransformer

    if weights is None:
        raise EncoderError(f"encoder {name!r}", "the path of a local CLIP vision checkpoint", "none",
                           "download it where there is network access and pass its path (embed.weights)")
    names = list(band_names) if band_names else (list(LANDSAT_BANDS) if in_chans == 6 else [])
    missing = [b for b in ("red", "green", "blue") if b not in names]
    if missing:
        raise EncoderError(f"encoder {name!r}: band_names", "red, green and blue among the chip bands",
                           f"{names} (no {missing})", "give the scene's band names (tile.bands) in order")
    state, arch = clip_to_timm(read_state_dict(weights), str(weights))
    heads = num_heads or arch["num_heads"]
    model = VisionTransformer(img_size=arch["img_size"], patch_size=arch["patch_size"], in_chans=3, num_classes=0,
                              global_pool="token", embed_dim=arch["width"], depth=arch["depth"], num_heads=heads,
                              mlp_ratio=arch["mlp_dim"] / arch["width"], qkv_bias=True, pre_norm=True,
                              act_layer=get_act_layer("quick_gelu"), norm_layer=nn.LayerNorm)  # eps 1e-5 as HF CLIP
    _strict_load(model, state, str(weights), f"CLIP ViT (width {arch['width']}, depth {arch['depth']})")
    cfg = {**arch, "num_heads": heads, "band_names": names, "display_max": display_max}
    enc = PublishedEncoder(name, "clip", in_chans, arch["img_size"], model, arch["width"], cfg, display_max,
                           rgb=[names.index(b) for b in ("red", "green", "blue")], mean=CLIP_MEAN, std=CLIP_STD)
    enc.weights_digest = file_digest(weights)
    return enc
