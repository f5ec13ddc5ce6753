"""Published-weight adapters: checkpoints written here with the real key names and shapes (SSL4EO-L in
torchgeo's timm layout, CLIP in the Hugging Face CLIPVisionModel layout) round-trip, the band mapping is the
stated one, and checkpoints of another architecture are refused with a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from models import create_encoder
from models.adapters import BAND_SOURCES, SSL4EO_L_BANDS, band_matrix, clip_to_timm
from models.errors import EncoderError

OURS = ["blue", "green", "red", "nir", "swir1", "swir2"]


def _ssl4eo_checkpoint(tmp_path, arch, sensor, fmt="pth", seed=0):
    torch.manual_seed(seed)
    n = len(SSL4EO_L_BANDS[sensor])
    model = timm.create_model(arch, pretrained=False, in_chans=n, num_classes=7)  # torchgeo files keep a head
    state = model.state_dict()
    path = tmp_path / f"{arch}_{sensor}.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_band_mapping_is_the_stated_one():
    m = band_matrix("etm_toa", OURS)
    theirs = SSL4EO_L_BANDS["etm_toa"]
    assert m.shape == (9, 6)
    assert m[theirs.index("B1"), OURS.index("blue")] == 1 and m[theirs.index("B7"), OURS.index("swir2")] == 1
    assert m[theirs.index("B6_VCID_1")].sum() == 0 and m[theirs.index("B6_VCID_2")].sum() == 0  # thermal: 0
    assert m[theirs.index("B8"), OURS.index("green")] == 0.5 and m[theirs.index("B8"), OURS.index("red")] == 0.5
    m = band_matrix("oli_sr", OURS)
    assert m[0, OURS.index("blue")] == 1 and m[1, OURS.index("blue")] == 1  # coastal and blue both from blue
    assert m[SSL4EO_L_BANDS["oli_sr"].index("B5"), OURS.index("nir")] == 1
    # every reflective channel of every product has exactly its stated sources
    for sensor, bands in SSL4EO_L_BANDS.items():
        m = band_matrix(sensor, OURS)
        for k, name in enumerate(bands):
            want = BAND_SOURCES[sensor].get(name, {})
            assert {OURS[b]: float(m[k, b]) for b in range(6) if m[k, b]} == want
    # band order of the scene does not matter; a missing band is named
    shuffled = ["nir", "red", "green", "blue", "swir2", "swir1"]
    m2 = band_matrix("etm_sr", shuffled)
    assert torch.equal(m2[:, shuffled.index("nir")], band_matrix("etm_sr", OURS)[:, OURS.index("nir")])
    with pytest.raises(EncoderError, match=r"\['swir1', 'swir2'\]"):
        band_matrix("etm_sr", ["blue", "green", "red", "nir"])
    with pytest.raises(EncoderError, match="etm_sr"):
        band_matrix("landsat9", OURS)


@pytest.mark.parametrize("arch,sensor,fmt", [("resnet18", "etm_sr", "pth"), ("resnet18", "oli_tirs_toa", "safetensors"),
                                             ("resnet50", "tm_toa", "pth"),
                                             ("vit_small_patch16_224", "oli_sr", "safetensors")])
def test_ssl4eo_l_checkpoint_round_trips_with_the_band_mapping(tmp_path, arch, sensor, fmt):
    path, state = _ssl4eo_checkpoint(tmp_path, arch, sensor, fmt)
    enc = create_encoder("ssl4eo_l", in_chans=6, weights=path, arch=arch, sensor=sensor)
    model = enc.model
    first_key = "conv1.weight" if arch.startswith("resnet") else "patch_embed.proj.weight"
    w_theirs, w_ours = state[first_key], model.state_dict()[first_key]
    m = band_matrix(sensor, OURS)
    assert w_ours.shape[1] == 6
    for b in range(6):
        expect = sum(w_theirs[:, k] * m[k, b] for k in range(m.shape[0]))
        assert torch.allclose(w_ours[:, b], expect, atol=1e-6)
    for k, v in model.state_dict().items():  # every other tensor loaded unchanged
        if k != first_key:
            assert torch.equal(v, state[k]), k
    # the model on our chips equals theirs on the product's channels built from our bands
    rng = np.random.default_rng(0)
    chips = torch.tensor(rng.uniform(0.0, 0.4, (2, 6, 16, 16)), dtype=torch.float32)
    ref = timm.create_model(arch, pretrained=False, in_chans=m.shape[0], num_classes=0)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith(("fc.", "head."))})
    ref.eval()
    x = enc.prepare(chips)
    theirs = torch.einsum("kb,nbhw->nkhw", m, x)
    with torch.no_grad():
        assert torch.allclose(enc(chips), ref(theirs), atol=1e-4, rtol=1e-4)
    assert enc.weights_digest and len(enc.weights_digest) == 64 and enc.input_size == 224


def test_ssl4eo_l_refuses_another_architecture_or_band_count(tmp_path):
    path, _ = _ssl4eo_checkpoint(tmp_path, "resnet50", "etm_sr")
    with pytest.raises(EncoderError, match=r"resnet18 \(etm_sr, 6 bands\).*missing|unexpected|shapes"):
        create_encoder("ssl4eo_l", in_chans=6, weights=path, arch="resnet18", sensor="etm_sr")
    path, _ = _ssl4eo_checkpoint(tmp_path, "resnet18", "oli_tirs_toa")  # 11 bands given as a 6-band product
    with pytest.raises(EncoderError, match="other shapes"):
        create_encoder("ssl4eo_l", in_chans=6, weights=path, arch="resnet18", sensor="etm_sr")
    with pytest.raises(EncoderError, match="local SSL4EO-L checkpoint"):
        create_encoder("ssl4eo_l_etm_sr_resnet18", in_chans=6)
    with pytest.raises(EncoderError, match="arch"):
        create_encoder("ssl4eo_l", in_chans=6, weights=path, arch="vit_base")


def _clip_checkpoint(tmp_path, width=64, depth=2, patch=8, img=32, mlp=128, seed=0, prefix="vision_model."):
    """A CLIP vision tower with Hugging Face's key names and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    n_pos = (img // patch) ** 2 + 1
    st = {f"{prefix}embeddings.class_embedding": r(width, s=0.5),
          f"{prefix}embeddings.patch_embedding.weight": r(width, 3, patch, patch),
          f"{prefix}embeddings.position_embedding.weight": r(n_pos, width, s=0.2),
          f"{prefix}embeddings.position_ids": torch.arange(n_pos).unsqueeze(0),
          f"{prefix}pre_layrnorm.weight": 1 + r(width), f"{prefix}pre_layrnorm.bias": r(width),
          f"{prefix}post_layernorm.weight": 1 + r(width), f"{prefix}post_layernorm.bias": r(width)}
    for i in range(depth):
        p = f"{prefix}encoder.layers.{i}."
        for q in ("q", "k", "v", "out"):
            st[p + f"self_attn.{q}_proj.weight"] = r(width, width, s=0.1)
            st[p + f"self_attn.{q}_proj.bias"] = r(width)
        for ln in ("layer_norm1", "layer_norm2"):
            st[p + f"{ln}.weight"], st[p + f"{ln}.bias"] = 1 + r(width), r(width)
        st[p + "mlp.fc1.weight"], st[p + "mlp.fc1.bias"] = r(mlp, width, s=0.1), r(mlp)
        st[p + "mlp.fc2.weight"], st[p + "mlp.fc2.bias"] = r(width, mlp, s=0.1), r(width)
    path = tmp_path / "clip_vision.safetensors"
    save_file(st, str(path))
    return path, st


def _clip_reference(st, pixels, heads, prefix="vision_model."):
    """CLIP's vision forward written from its definition (Radford et al. 2021; HF CLIPVisionTransformer):
    patch embedding + class token + positions, pre-LN, pre-norm blocks with QuickGELU, post-LN of the
    class token."""
    g = lambda k: st[prefix + k].double()  # noqa: E731
    x = torch.nn.functional.conv2d(pixels.double(), g("embeddings.patch_embedding.weight"),
                                   stride=st[prefix + "embeddings.patch_embedding.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = g("embeddings.class_embedding").expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + g("embeddings.position_embedding.weight")
    ln = lambda t, k: torch.nn.functional.layer_norm(t, t.shape[-1:], g(k + ".weight"), g(k + ".bias"), 1e-5)  # noqa
    x = ln(x, "pre_layrnorm")
    i = 0
    while prefix + f"encoder.layers.{i}.mlp.fc1.weight" in st:
        p = f"encoder.layers.{i}."
        h = ln(x, p + "layer_norm1")
        n, t, d = h.shape
        q, k, v = (torch.nn.functional.linear(h, g(p + f"self_attn.{a}_proj.weight"), g(p + f"self_attn.{a}_proj.bias"))
                   .view(n, t, heads, d // heads).transpose(1, 2) for a in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        att = att.transpose(1, 2).reshape(n, t, d)
        x = x + torch.nn.functional.linear(att, g(p + "self_attn.out_proj.weight"), g(p + "self_attn.out_proj.bias"))
        h = ln(x, p + "layer_norm2")
        h = torch.nn.functional.linear(h, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias"))
        h = h * torch.sigmoid(1.702 * h)
        x = x + torch.nn.functional.linear(h, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias"))
        i += 1
    return ln(x[:, 0], "post_layernorm")


def test_clip_vision_tower_equals_its_definition(tmp_path):
    path, st = _clip_checkpoint(tmp_path)
    enc = create_encoder("clip", in_chans=6, weights=path)
    assert enc.config()["width"] == 64 and enc.config()["depth"] == 2 and enc.config()["img_size"] == 32
    rng = np.random.default_rng(1)
    chips = torch.tensor(rng.uniform(0, 0.35, (3, 6, 20, 20)), dtype=torch.float32)
    chips[0, :, 0, 0] = float("nan")
    # the stated input: red, green, blue / display_max, clipped, CLIP-normalised, resized
    rgb = torch.nan_to_num(chips[:, [2, 1, 0]] / 0.3, nan=0.0).clamp(0, 1)
    rgb = (rgb - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / \
        torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    rgb = torch.nn.functional.interpolate(rgb, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(enc.prepare(chips), rgb, atol=1e-6)
    with torch.no_grad():
        ours = enc(chips).double()
    assert torch.allclose(ours, _clip_reference(st, rgb, heads=1), atol=1e-4)


def test_clip_accepts_a_bare_tower_and_refuses_other_layouts(tmp_path):
    path, _ = _clip_checkpoint(tmp_path, prefix="")
    assert create_encoder("clip", in_chans=6, weights=path).embed_dim == 64
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    other = tmp_path / "timm_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(other))
    with pytest.raises(EncoderError, match="CLIPVisionModel layout"):
        create_encoder("clip", in_chans=6, weights=other)
    with pytest.raises(EncoderError, match="red, green and blue"):
        create_encoder("clip", in_chans=4, weights=path, band_names=["nir", "swir1", "swir2", "green"])
    _, st = _clip_checkpoint(tmp_path)
    st["vision_model.extra.weight"] = torch.zeros(2)
    with pytest.raises(EncoderError, match="only CLIP vision-tower keys"):
        clip_to_timm(st)


def test_embed_stage_reads_weights_from_params(tmp_path):
    from pipeline.core.config import config_from_dict
    from pipeline.core.errors import ConfigError
    from pipeline.procedures.embed import make_encoder, weights_paths

    path, _ = _clip_checkpoint(tmp_path)
    params = {"embed": {"encoders": ["spectral", "clip_rsicd"],
                        "weights": [{"encoder": "clip_rsicd", "path": path.name}]}}
    cfg = config_from_dict(params)
    local = weights_paths(cfg.embed, tmp_path)
    assert local == {"clip_rsicd": str(path.resolve())}
    enc = make_encoder("clip_rsicd", 6, 0, None, local["clip_rsicd"])
    assert enc.family == "clip" and enc.config()["display_max"] == 0.3
    with pytest.raises(ConfigError, match=r"embed.weights\[0\].encoder"):
        config_from_dict({"embed": {"encoders": ["spectral"], "weights": [{"encoder": "clip_rsicd", "path": "x"}]}})
