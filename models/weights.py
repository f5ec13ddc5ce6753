"""Safe loading of local encoder weights.

Only two formats are read: safetensors, and torch files loaded with ``torch.load(weights_only=True)``,
which refuses any pickled object that is not a tensor/container. Nothing is ever unpickled as code.
When a checkpoint's first convolution / patch embedding has a different number of input channels than the
encoder (e.g. RGB weights for 6-band imagery), the kernel is adapted by repeating the channel-mean kernel
and rescaling by ``ckpt_channels / in_chans`` so activations keep their magnitude.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .errors import EncoderError


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise EncoderError(str(path), "a local weights file", "no such file",
                           "give the path of a .safetensors or .pt/.pth file (hub downloads are not used)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types on corrupt headers
            raise EncoderError(str(path), "a valid safetensors file", f"unreadable ({exc})",
                               "re-export the checkpoint") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderError(str(path), "a tensors-only checkpoint (torch.load weights_only=True)",
                           f"a file that cannot be loaded safely ({type(exc).__name__})",
                           "save only the state_dict, or convert it to safetensors") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderError(str(path), "a mapping of parameter names to tensors", type(obj).__name__,
                           "save model.state_dict()")
    return obj


def _adapt_in_chans(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.ndim != 4 or target.ndim != 4:
            continue
        if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:] \
                and value.shape[1] != target.shape[1]:
            mean = value.mean(dim=1, keepdim=True)
            out[key] = mean.repeat(1, target.shape[1], 1, 1) * (value.shape[1] / target.shape[1])
    return out


def load_weights(encoder: nn.Module, path: str | os.PathLike) -> str:
    """Load a local checkpoint into ``encoder`` (strict), returning the file's SHA-256.

    Raises:
        EncoderError: the file is missing, unsafe, or does not match the encoder's architecture.
    """
    state = read_state_dict(path)
    target = encoder.model if hasattr(encoder, "model") else encoder
    if not any(k in target.state_dict() for k in state) and hasattr(encoder, "model"):
        stripped = {k.split("model.", 1)[1]: v for k, v in state.items() if k.startswith("model.")}
        state = stripped or state
    state = _adapt_in_chans(state, target)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                  f"(e.g. {unexpected[:2]}), {len(mismatched)} with other shapes (e.g. {mismatched[:2]})")
        raise EncoderError(str(path), f"weights for encoder {getattr(encoder, 'name', '?')!r}", detail,
                           "use a checkpoint of the same architecture and preset")
    target.load_state_dict(state, strict=True)
    return file_digest(path)
