"""Model scaling strategies and complexity counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import EncoderError, create_encoder
from models.complexity import count, encoder_complexity
from models.registry import build_family, list_presets
from models.scaling import STRATEGIES, achieved, exponents, scale

VIT = {"family": "vit", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4,
       "mlp_ratio": 2.0}
RESNET = {"family": "resnet", "img_size": 32, "layers": [1, 1, 1, 1], "base_width": 16}


def test_exponents_sum_to_one_and_alpha():
    for name, e in STRATEGIES.items():
        assert sum(e) == pytest.approx(1.0)
    assert exponents("dWr") == pytest.approx(exponents(0.8))
    assert exponents("dwr") == pytest.approx(exponents(1 / 3))
    assert exponents("w") == pytest.approx(exponents(1.0))
    assert exponents("dr") == pytest.approx(exponents(0.0))


def test_vit_flops_match_the_analytic_formula():
    """Counted with timm's fused attention switched on: the attention products must still be counted."""
    enc = build_family(dict(VIT), 6)
    for m in enc.model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    c = count(enc.model, 6, 32)
    n, d, p = 16 + 1, 64, 8  # patches + class token
    patch = 16 * 6 * p * p * d
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 2 * d  # qkv, attention, proj, MLP
    assert c.flops == patch + 2 * block
    heads = 4
    # activations: patch embedding, and per block qkv, q.k (attention map), attn.v, proj, fc1, fc2
    acts = 16 * d + 2 * (n * 3 * d + heads * n * n + n * d + n * d + n * 2 * d + n * d)
    assert c.acts == acts
    assert c.params == sum(p.numel() for p in enc.model.parameters())
    assert all(m.fused_attn for m in enc.model.modules() if hasattr(m, "fused_attn"))  # restored


def test_conv_flops_analytic():
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, groups=2)
    c = count(conv, 6, 10)
    assert c.flops == 8 * 10 * 10 * (3 * 3 * 6 // 2)
    assert c.acts == 8 * 10 * 10


@pytest.mark.parametrize("strategy", list(STRATEGIES) + [0.5])
def test_scaled_configs_obey_rounding_rules(strategy):
    for base in (VIT, RESNET):
        for s in (1, 2, 4, 8):
            cfg = scale(base, strategy, s).config
            if base["family"] == "vit":
                assert cfg["img_size"] % cfg["patch_size"] == 0 and cfg["depth"] >= 1
                assert cfg["embed_dim"] % cfg["num_heads"] == 0 and cfg["embed_dim"] % 8 == 0
                assert cfg["embed_dim"] // cfg["num_heads"] == base["embed_dim"] // base["num_heads"]
            else:
                assert cfg["base_width"] % 8 == 0 and min(cfg["layers"]) >= 1 and cfg["img_size"] % 8 == 0
            build_family(cfg, 3)  # every scaled configuration builds


def test_scaling_reaches_about_s_and_fast_scaling_has_fewest_activations():
    base = dict(list_presets()["vit_scaling_base"])
    res = {st: achieved(base, scale(base, st, 4), 6) for st in ("dWr", "dwr", "dr")}
    for r in res.values():
        assert 2.5 < r["flops_factor"] < 6
    per_flop = {st: np.log(r["acts_factor"]) / np.log(r["flops_factor"]) for st, r in res.items()}
    assert per_flop["dWr"] < per_flop["dwr"] < per_flop["dr"]


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_bad_s(bad):
    with pytest.raises(EncoderError):
        scale(VIT, "dWr", bad)


@pytest.mark.parametrize("bad", [1.5, -0.1, "dWR", "fast"])
def test_bad_alpha_or_name(bad):
    with pytest.raises(EncoderError):
        scale(VIT, bad, 2)


def test_vit_input_not_divisible_by_patch():
    with pytest.raises(EncoderError) as exc:
        create_encoder("vit_tiny", in_chans=6, img_size=30)
    assert "patch_size" in exc.value.expected


def test_every_registered_encoder_has_complexity():
    for name in ("vit_tiny", "resnet_tiny", "regnet_tiny"):
        c = encoder_complexity(create_encoder(name, in_chans=6))
        assert c.flops > 0 and c.acts > 0 and c.params > 0


def test_scaling_study_and_its_report(tmp_path):
    """A small scaling study (2 strategies, 2 factors, no timing) writes its table, metrics and a report."""
    from pipeline.core.config import ScalingConfig
    from pipeline.procedures.scaling import run_scaling_study
    from pipeline.report.document import write_report

    cfg = ScalingConfig(bases=("vit_tiny", "resnet_tiny"), strategies=("dWr", "dr"), factors=(1.0, 4.0),
                        timing=False)
    m = run_scaling_study(cfg, tmp_path / "out" / "scaling", progress=False)
    assert m["exponents"]["vit_tiny"]["dWr"]["theory_acts"] == pytest.approx(0.6)
    html = write_report(tmp_path / "out", tmp_path / "report.html", title="scaling")
    text = html.read_text()
    assert "Model scaling" in text and text.count("data:image/png;base64,") == 1
