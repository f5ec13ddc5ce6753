r"""Model scaling strategies of Dollár, Singh & Girshick, *Fast and Accurate Model Scaling* (CVPR 2021).

A network's FLOPs grow as :math:`f \propto d\, w^2 r^2` in depth d, width w and input resolution r. To grow
a base model by a FLOPs factor s, a strategy splits s into exponents :math:`e_d + e_w + e_r = 1` and scales

.. math::  d \to d\, s^{e_d}, \qquad w \to w\, s^{e_w / 2}, \qquad r \to r\, s^{e_r / 2}.

With one parameter :math:`\alpha \in [0, 1]`: :math:`e_d = (1-\alpha)/2`, :math:`e_w = \alpha`,
:math:`e_r = (1-\alpha)/2`. Activations grow as :math:`d\, w\, r^2`, i.e. as :math:`s^{1 - \alpha/2}`:
``dWr`` (:math:`\alpha = 0.8`, "fast compound scaling") keeps activations — and so run time on
memory-bound hardware — growing as :math:`s^{0.6}`, against :math:`s^{0.83}` for uniform compound scaling
``dwr`` (:math:`\alpha = 1/3`), :math:`s^{0.5}` for width only ``w`` and :math:`s^{1}` for ``dr``.

Named strategies: ``d``, ``w``, ``r`` (one dimension), ``dw``, ``dr``, ``wr`` (two, equal shares),
``dwr`` (three, equal shares), ``dWr`` (:math:`\alpha = 0.8`); or any :math:`\alpha` as a number.

Rounding rules (rounding moves the achieved FLOPs factor, which :func:`achieved` measures):

* depth: ViT blocks, ResNet blocks per stage: ``max(1, round(d * m_d))``;
* width: ViT ``embed_dim`` to a multiple of lcm(8, head_dim), keeping the base head dimension, so the
  number of heads (``embed_dim / head_dim``) always divides ``embed_dim``; ResNet base width to a multiple
  of 8 (at least 8);
* resolution: ViT ``img_size`` to a multiple of the patch size; CNN ``img_size`` to a multiple of 8 (at
  least one patch / 8 pixels).

These are pure functions of configurations; the ViT rules are this project's (the reference code scales
CNNs only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import EncoderError

STRATEGIES: dict[str, tuple[float, float, float]] = {
    "d": (1.0, 0.0, 0.0),
    "w": (0.0, 1.0, 0.0),
    "r": (0.0, 0.0, 1.0),
    "dw": (0.5, 0.5, 0.0),
    "dr": (0.5, 0.0, 0.5),
    "wr": (0.0, 0.5, 0.5),
    "dwr": (1 / 3, 1 / 3, 1 / 3),
    "dWr": (0.1, 0.8, 0.1),
}

Strategy = Union[str, float]


def exponents(strategy: Strategy) -> tuple[float, float, float]:
    """(e_d, e_w, e_r) of a named strategy or of an alpha in [0, 1].

    Raises:
        EncoderError: unknown name, or alpha outside [0, 1].
    """
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise EncoderError("scaling strategy", f"one of {list(STRATEGIES)} or an alpha in [0, 1]",
                               repr(strategy), "use e.g. dWr (fast compound scaling)")
        return STRATEGIES[strategy]
    alpha = float(strategy)
    if not 0.0 <= alpha <= 1.0:
        raise EncoderError("scaling alpha", "a number in [0, 1]", repr(strategy), "alpha = 0.8 is dWr")
    return ((1 - alpha) / 2, alpha, (1 - alpha) / 2)


@dataclass(frozen=True)
class Scaled:
    """A scaled configuration and the factors that produced it."""

    config: dict[str, Any]
    strategy: Strategy
    s: float
    exponents: tuple[float, float, float]
    multipliers: tuple[float, float, float]  # target depth, width and resolution multipliers


def _round_to(x: float, q: int, minimum: int) -> int:
    return max(minimum, int(round(x / q)) * q)


def scale(base: Mapping[str, Any], strategy: Strategy, s: float) -> Scaled:
    """Scale a base encoder configuration (a preset mapping with ``family``) by FLOPs factor ``s``.

    Raises:
        EncoderError: s <= 0, bad strategy/alpha, or a family without scaling rules.
    """
    if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
        raise EncoderError("scaling factor s", "a positive FLOPs factor", repr(s), "use e.g. 2, 4 or 8")
    e_d, e_w, e_r = exponents(strategy)
    m_d, m_w, m_r = s ** e_d, s ** (e_w / 2), s ** (e_r / 2)
    cfg = dict(base)
    family = cfg.get("family")
    if family == "vit":
        head_dim = cfg["embed_dim"] // cfg["num_heads"]
        q = 8 * head_dim // math.gcd(8, head_dim)
        dim = _round_to(cfg["embed_dim"] * m_w, q, q)
        cfg.update(depth=max(1, round(cfg["depth"] * m_d)), embed_dim=dim, num_heads=dim // head_dim,
                   img_size=_round_to(cfg["img_size"] * m_r, cfg["patch_size"], cfg["patch_size"]))
    elif family == "resnet":
        cfg.update(layers=[max(1, round(n * m_d)) for n in cfg["layers"]],
                   base_width=_round_to(cfg["base_width"] * m_w, 8, 8),
                   img_size=_round_to(cfg["img_size"] * m_r, 8, 8))
    else:
        raise EncoderError("scaling family", "a 'vit' or 'resnet' base configuration", repr(family),
                           "scale a ViT or ResNet preset")
    return Scaled(config=cfg, strategy=strategy, s=float(s), exponents=(e_d, e_w, e_r), multipliers=(m_d, m_w, m_r))


def achieved(base: Mapping[str, Any], scaled: Scaled, in_chans: int) -> dict[str, float]:
    """Build both models and measure the achieved FLOPs, activations and parameter factors."""
    from .complexity import count
    from .registry import build_family

    b = build_family(dict(base), in_chans)
    t = build_family(dict(scaled.config), in_chans)
    cb = count(b.model, in_chans, b.input_size)
    ct = count(t.model, in_chans, t.input_size)
    return {"flops": ct.flops, "acts": ct.acts, "params": ct.params,
            "flops_factor": ct.flops / cb.flops, "acts_factor": ct.acts / cb.acts,
            "params_factor": ct.params / cb.params}
