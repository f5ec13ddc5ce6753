"""Encoder registry: families (code) and named presets (``configs/encoders/*.yaml``).

``create_encoder(name, in_chans=..., seed=..., weights=..., **overrides)`` builds a family by its name
(``spectral``, ``vit``, ``resnet``, ``regnet``, ``rcf``) or a preset by its file name (``vit_tiny``), with
keyword overrides.
Unknown names fail listing close matches.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import os
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from .adapters import build_clip, build_ssl4eo_l
from .encoders import Encoder, RandomConvFeatures, SpectralStats, build_regnet, build_resnet, build_vit
from .errors import EncoderError
from .weights import load_weights

FAMILIES: dict[str, Callable[..., Encoder]] = {
    "spectral": lambda name, in_chans, **kw: SpectralStats(name=name, in_chans=in_chans, **kw),
    "vit": build_vit,
    "resnet": build_resnet,
    "regnet": build_regnet,
    "rcf": lambda name, in_chans, **kw: RandomConvFeatures(name=name, in_chans=in_chans, **kw),
    "ssl4eo_l": build_ssl4eo_l,
    "clip": build_clip,
}
PUBLISHED = ("ssl4eo_l", "clip")
"""Families built from a published checkpoint: the builder reads ``weights`` itself (architecture and band
mapping depend on it)."""



def _preset_dir() -> Path:
    """The preset folder: ``$MSCATE_ENCODER_PRESETS`` when set; else the installed package data
    ``models.presets`` (``configs/encoders/`` of the source tree); else that folder beside this package
    (a source checkout that is not installed)."""
    if os.environ.get("MSCATE_ENCODER_PRESETS"):
        return Path(os.environ["MSCATE_ENCODER_PRESETS"])
    try:
        from importlib.resources import files

        return Path(str(files("models.presets")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs" / "encoders"


PRESET_DIR = _preset_dir()


def list_presets() -> dict[str, dict[str, Any]]:
    """Presets found in the preset folder, by name."""
    out = {}
    if PRESET_DIR.is_dir():
        for p in sorted(PRESET_DIR.glob("*.yaml")):
            data = yaml.safe_load(p.read_text()) or {}
            out[p.stem] = data
    return out


def list_encoders() -> list[str]:
    return sorted(set(FAMILIES) | set(list_presets()))


def _resolve(name: str) -> tuple[str, dict[str, Any]]:
    presets = list_presets()
    if name in presets:
        spec = dict(presets[name])
        family = spec.pop("family", None)
        if family not in FAMILIES:
            raise EncoderError(str(PRESET_DIR / f"{name}.yaml"), f"family one of {sorted(FAMILIES)}",
                               repr(family), "fix the preset's `family` key")
        return family, spec
    if name in FAMILIES:
        return name, {}
    close = difflib.get_close_matches(name, list_encoders(), n=3, cutoff=0.4)
    raise EncoderError(f"encoder {name!r}", f"a registered encoder ({', '.join(list_encoders())})",
                       "an unknown name", f"did you mean {', '.join(close)}?" if close else "pick one of those")


TRAINABLE = ("vit", "resnet", "regnet")


def check_trainable(name: str) -> str:
    """The family of ``name`` when it can be pretrained (a timm backbone), else an EncoderError."""
    family, _ = _resolve(name)
    if family not in TRAINABLE:
        raise EncoderError(f"pretrain.encoders: {name!r}", f"a preset of a trainable family ({', '.join(TRAINABLE)})",
                           f"family {family!r}", "list only ViT/ResNet/RegNet presets (spectral and rcf need no "
                           "training)")
    return family


def create_encoder(name: str, *, in_chans: int, seed: int = 0, weights: str | os.PathLike | None = None,
                   **overrides: Any) -> Encoder:
    """Create an encoder by family or preset name.

    Args:
        name: family (``spectral``, ``vit``, ``resnet``) or preset (``configs/encoders/<name>.yaml``).
        in_chans: number of image bands.
        seed: seed of the random initialisation (used when no weights are given).
        weights: optional local checkpoint (safetensors or a tensors-only torch file).
        **overrides: family keyword arguments that replace the preset's.

    Raises:
        EncoderError: unknown name, unknown override keys, bad weights.
    """
    if in_chans < 1:
        raise EncoderError("in_chans", "at least one band", str(in_chans), "pass the chip band count")
    family, spec = _resolve(name)
    spec.update(overrides)
    builder = FAMILIES[family]
    params = inspect.signature(builder).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in spec if k not in params]
        if unknown:
            known = [k for k in params if k not in ("name", "in_chans")]
            raise EncoderError(f"encoder {name!r}", f"keys among {known}",
                               f"unknown keys {unknown}", "remove them from the preset/overrides")
    torch.manual_seed(seed)
    if family in PUBLISHED:
        enc = builder(name=name, in_chans=in_chans, weights=weights, **spec)
        enc.seed = seed
        enc.eval()
        return enc
    enc = builder(name=name, in_chans=in_chans, **spec)
    enc.weights_digest = None
    enc.seed = seed
    if weights is not None:
        enc.weights_digest = load_weights(enc, weights)
    enc.eval()
    return enc


def from_hub(hub_id: str, *, in_chans: int) -> Encoder:
    """A pretrained timm model from the Hugging Face hub (needs network access), pooled, ``in_chans`` bands.

    Raises:
        EncoderError: when the download fails (offline, unknown model), saying how to use local weights.
    """
    import timm

    from .encoders import TimmEncoder

    try:
        model = timm.create_model(hub_id, pretrained=True, in_chans=in_chans, num_classes=0)
    except Exception as exc:  # timm/huggingface_hub raise many types when offline or for unknown ids
        raise EncoderError(f"hub model {hub_id!r}", "weights downloadable from the model hub",
                           f"a failure ({type(exc).__name__}; offline or unknown model?)",
                           "download the checkpoint where there is network access and pass weights=PATH "
                           "(safetensors) with a matching preset") from None
    size = int(model.pretrained_cfg.get("input_size", (in_chans, 224, 224))[-1])
    enc = TimmEncoder(hub_id, "hub", in_chans, size, model, model.num_features, {"hub": hub_id})
    enc.weights_digest = None
    enc.seed = None
    return enc.eval()


def build_family(config: dict[str, Any], in_chans: int, seed: int = 0) -> Encoder:
    """Build an encoder from a full configuration mapping with a ``family`` key (e.g. a scaled preset)."""
    spec = dict(config)
    family = spec.pop("family", None)
    if family not in FAMILIES:
        raise EncoderError("config: family", f"one of {sorted(FAMILIES)}", repr(family), "fix the configuration")
    torch.manual_seed(seed)
    enc = FAMILIES[family](name=f"{family}-scaled", in_chans=in_chans, **spec)
    enc.eval()
    return enc


def encoder_card(enc: Encoder) -> dict[str, Any]:
    """A JSON-able description: name, family, config, parameter count, embedding size, weights digest."""
    n_params = sum(p.numel() for p in enc.parameters())
    h = hashlib.sha256()
    for k, v in sorted(enc.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {
        "name": enc.name,
        "family": enc.family,
        "config": enc.config(),
        "in_chans": enc.in_chans,
        "embed_dim": enc.embed_dim,
        "input_size": enc.input_size,
        "params": int(n_params),
        "weights_file_sha256": getattr(enc, "weights_digest", None),
        "state_sha256": h.hexdigest(),
        "init_seed": getattr(enc, "seed", None),
    }
