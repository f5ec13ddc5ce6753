"""Model complexity with pycls' definitions: FLOPs (multiply-adds), parameters and activations.

* **flops**: multiply-adds of every convolution and matrix multiplication (linear layers, attention
  products), per image;
* **activations**: the number of elements output by those same operations (attention maps included),
  per image: the quantity Dollár, Singh & Girshick show predicts run time on memory-bound accelerators;
* **params**: number of parameters.

Counting runs one forward pass under a ``TorchDispatchMode`` that sees every ATen convolution / mm / addmm /
bmm, so nothing depends on module types. timm's fused attention (``scaled_dot_product_attention``) hides
the attention map, so fused attention is switched off on every module that has it while counting, which
turns attention into two visible batched matrix products (q·kᵀ, whose output is the attention map, and
attention·v).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


@dataclass(frozen=True)
class Complexity:
    """Per-image complexity of a model at one input size."""

    flops: int
    params: int
    acts: int
    input_size: int

    def as_dict(self) -> dict:
        return {"flops": self.flops, "params": self.params, "acts": self.acts, "input_size": self.input_size}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.flops = 0
        self.acts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in (aten.convolution, aten._convolution, aten.cudnn_convolution, aten.mkldnn_convolution):
            x, w = args[0], args[1]
            groups = int(args[8]) if packet is aten.convolution and len(args) > 8 else 1
            if packet is aten._convolution and len(args) > 8:
                groups = int(args[8])
            k = _numel(w.shape[2:]) * (x.shape[1] // groups)
            self.flops += _numel(out.shape) * k
            self.acts += _numel(out.shape)
        elif packet in (aten.mm, aten.addmm):
            a = args[0] if packet is aten.mm else args[1]
            self.flops += _numel(out.shape) * a.shape[-1]
            self.acts += _numel(out.shape)
        elif packet in (aten.bmm, aten.baddbmm):
            a = args[0] if packet is aten.bmm else args[1]
            self.flops += _numel(out.shape) * a.shape[-1]
            self.acts += _numel(out.shape)
        return out


@contextlib.contextmanager
def unfused_attention(model: torch.nn.Module):
    """Temporarily turn off fused attention on every submodule that has a ``fused_attn`` flag."""
    flagged = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in flagged:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, v in flagged:
            m.fused_attn = v


def count(model: torch.nn.Module, in_chans: int, input_size: int) -> Complexity:
    """FLOPs, parameters and activations of ``model`` for one (in_chans, input_size, input_size) image."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, input_size, input_size)
    counter = _Counter()
    with torch.no_grad(), unfused_attention(model), counter:
        model(x)
    model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(flops=int(counter.flops), params=int(params), acts=int(counter.acts), input_size=input_size)


def encoder_complexity(encoder, input_size: int | None = None) -> Complexity:
    """Complexity of a registered encoder (its backbone at its own input size by default)."""
    size = input_size or encoder.input_size or 32
    model = getattr(encoder, "model", encoder)
    return count(model, encoder.in_chans, size)
