"""Self-supervised pretraining (VICReg): the loss against a brute-force computation, the augmentations, the
training loop (lowers its loss, bitwise reproducible on the CPU), the pretrain stage on a tiny scene and the
embed stage's ``<preset>_ssl`` encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_raster

from models import create_encoder
from models.errors import EncoderError
from models.ssl import AugmentSpec, augment, pretrain_vicreg, vicreg_loss
from pipeline.core.config import config_from_dict
from pipeline.core.errors import ConfigError
from pipeline.core.layout import StudyLayout


def _vicreg_reference(z1, z2, sim=25.0, var=25.0, cov=1.0):
    """VICReg's loss written out element by element (float64)."""
    z1, z2 = np.asarray(z1, dtype=np.float64), np.asarray(z2, dtype=np.float64)
    n, d = z1.shape
    inv = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v(z):
        out = 0.0
        for j in range(d):
            m = sum(z[:, j]) / n
            s2 = sum((z[i, j] - m) ** 2 for i in range(n)) / (n - 1)
            out += max(0.0, 1.0 - np.sqrt(s2 + 1e-4))
        return out / d

    def c(z):
        m = z.mean(axis=0)
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    cab = sum((z[i, a] - m[a]) * (z[i, b] - m[b]) for i in range(n)) / (n - 1)
                    total += cab ** 2
        return total / d

    return sim * inv + var * (v(z1) + v(z2)) + cov * (c(z1) + c(z2))


def test_vicreg_loss_equals_brute_force():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(9, 5)) * [0.3, 1, 2, 0.1, 1], rng.normal(size=(9, 5))
    loss, terms = vicreg_loss(torch.tensor(z1, dtype=torch.float64), torch.tensor(z2, dtype=torch.float64))
    assert float(loss) == pytest.approx(_vicreg_reference(z1, z2), rel=1e-5)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_vicreg_loss_null_cases_and_pinned_value():
    # identical, decorrelated views with unit spread: no invariance, variance nor covariance penalty
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * np.sqrt(3 / 4)
    loss, terms = vicreg_loss(z, z.clone())
    assert terms["invariance"] == 0.0 and terms["covariance"] == pytest.approx(0.0, abs=1e-12)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # collapsed projections pay the full variance penalty
    const = torch.ones(6, 3)
    _, t = vicreg_loss(const, const)
    assert t["variance"] == pytest.approx(2 * (1 - 1e-2), abs=1e-6)
    # invariance: the loss does not depend on the order of the batch (a permutation of both views)
    rng = np.random.default_rng(1)
    a, b = torch.tensor(rng.normal(size=(8, 4))), torch.tensor(rng.normal(size=(8, 4)))
    perm = torch.tensor(rng.permutation(8))
    assert float(vicreg_loss(a, b)[0]) == pytest.approx(float(vicreg_loss(a[perm], b[perm])[0]), rel=1e-12)
    # pinned
    assert float(vicreg_loss(a, b)[0]) == pytest.approx(_vicreg_reference(a.numpy(), b.numpy()), rel=1e-9)
    assert float(vicreg_loss(a, b)[0]) == pytest.approx(52.34206403529629, rel=1e-9)


def test_augmentations_keep_shape_and_respect_the_options():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, 12, 12)
    assert torch.equal(augment(x, AugmentSpec(kinds=()), gen, 0.1), x)
    # flips only: every view is one of the four flips of its chip (values moved, never mixed)
    y = augment(x, AugmentSpec(kinds=("flip",)), gen, 0.1)
    for i in range(len(x)):
        flips = [x[i], x[i].flip(-1), x[i].flip(-2), x[i].flip(-1).flip(-2)]
        assert any(torch.allclose(y[i], f, atol=1e-5) for f in flips)
    # rot90 only: one of the four rotations (so an orientation is lost: off by default)
    y = augment(x, AugmentSpec(kinds=("rot90",)), gen, 0.1)
    for i in range(len(x)):
        assert any(torch.allclose(y[i], torch.rot90(x[i], k, dims=(-2, -1)), atol=1e-5) for k in range(4))
    assert "rot90" not in AugmentSpec().kinds
    # band drop with probability 1: exactly one band of every chip set to the mean (0), the others unchanged
    y = augment(x, AugmentSpec(kinds=("band_drop",), band_drop=1.0), gen, 0.1)
    zeroed = (y == 0).flatten(2).all(-1)
    assert (zeroed.sum(1) == 1).all()
    assert torch.equal(y[~zeroed], x[~zeroed])
    # noise: the spread of the difference is noise_sd in reflectance / the standardisation spread
    y = augment(x, AugmentSpec(kinds=("noise",), noise_sd=0.02), gen, 0.1)
    assert float((y - x).std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(EncoderError, match="pretrain.augment"):
        AugmentSpec(kinds=("colour_jitter",))


def _pools(seed=0):
    """Chips with structure to learn: stripes of random orientation and phase, plus noise (reflectance)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    chips = []
    for _ in range(96):
        ang, ph = rng.choice([0, np.pi / 2]), rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 0.8 + ph)
        chips.append(0.15 + 0.08 * wave[None] * rng.uniform(0.5, 1.5, (3, 1, 1)) + rng.normal(0, 0.01, (3, 16, 16)))
    arr = np.asarray(chips, dtype=np.float32)
    arr[0, :, 0, 0] = np.nan  # an invalid pixel is standardised to 0, never propagated
    return [torch.from_numpy(arr)]


def _train(seed, steps=40):
    enc = create_encoder("vit", in_chans=3, seed=seed, img_size=16, patch_size=4, embed_dim=32, depth=1,
                         num_heads=2, mlp_ratio=2.0)
    res = pretrain_vicreg(enc, _pools(), steps=steps, batch_size=32, lr=5e-3, weight_decay=0.0, projector_dim=32,
                          aug=AugmentSpec(), seed=seed, device=torch.device("cpu"))
    return enc, res


def test_pretraining_lowers_its_loss_and_is_reproducible():
    enc, res = _train(3)
    assert len(res.losses) == 40 and np.isfinite(res.losses).all()
    assert np.mean(res.losses[-8:]) < 0.85 * np.mean(res.losses[:8])
    assert res.images_seen == 40 * 32 and res.device == "cpu" and res.precision == "float32"
    enc2, res2 = _train(3)
    assert res.losses == res2.losses
    s1, s2 = enc.state_dict(), enc2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    enc3, res3 = _train(4)
    assert res3.losses != res.losses
    assert not enc.training  # handed back in eval mode, on the CPU


def test_pretraining_refuses_untrainable_encoders_and_bad_budgets():
    with pytest.raises(EncoderError, match="timm encoder"):
        pretrain_vicreg(create_encoder("spectral", in_chans=3), _pools(), steps=2, batch_size=8, lr=1e-3,
                        weight_decay=0, projector_dim=8, aug=AugmentSpec(), seed=0, device=torch.device("cpu"))
    enc = create_encoder("vit", in_chans=3, img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(EncoderError, match="batch_size"):
        pretrain_vicreg(enc, [p[:4] for p in _pools()], steps=2, batch_size=8, lr=1e-3, weight_decay=0,
                        projector_dim=8, aug=AugmentSpec(), seed=0, device=torch.device("cpu"))
    from models.registry import check_trainable

    assert check_trainable("resnet_tiny") == "resnet"
    with pytest.raises(EncoderError, match="trainable family"):
        check_trainable("rcf")


def test_config_checks_ssl_names_and_pretrain_values(tiny_params):
    bad = dict(tiny_params, embed={**tiny_params["embed"], "encoders": ["spectral", "resnet_tiny_ssl"]})
    with pytest.raises(ConfigError, match=r"embed.encoders\[1\].*add resnet_tiny to pretrain.encoders"):
        config_from_dict(bad)
    with pytest.raises(ConfigError, match="pretrain.augment"):
        config_from_dict(dict(tiny_params, pretrain={**tiny_params["pretrain"], "augment": ["hue"]}))
    with pytest.raises(ConfigError, match="pretrain.crop_scale"):
        config_from_dict(dict(tiny_params, pretrain={**tiny_params["pretrain"], "crop_scale": [0.0, 1.0]}))
    with pytest.raises(ConfigError, match="pretrain.method"):
        config_from_dict(dict(tiny_params, pretrain={**tiny_params["pretrain"], "method": "dino"}))


def _scene(tmp_path):
    """A 4-band 160 x 160 px scene at 30 m with oriented stripes and a nodata corner."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:160, 0:160]
    wave = np.where(xx < 80, np.sin(yy * 0.5), np.sin(xx * 0.5))
    data = (1500 + 600 * wave[None] * np.array([1, 1.3, 0.7, 2.0])[:, None, None]
            + rng.normal(0, 30, (4, 160, 160))).astype(np.float32)
    data[:, :20, :20] = -9999
    return write_raster(tmp_path / "scene.tif", data, nodata=-9999)


def test_pretrain_stage_writes_checkpoint_card_and_curve_and_embed_loads_it(tmp_path):
    from pipeline.procedures import embed as embed_proc
    from pipeline.procedures import pretrain
    from pipeline.procedures.tile import tile_points

    scene = _scene(tmp_path)
    params = {"seed": 5, "tile": {"radiometry": 0.0001, "scales": [{"name": "a", "size_m": 240.0, "px": 8},
                                                                   {"name": "b", "size_m": 960.0, "px": 16}]},
              "pretrain": {"encoders": ["vit_tiny"], "positions": 64, "steps": 6, "batch_size": 16, "device": "cpu"},
              "embed": {"encoders": ["vit_tiny", "vit_tiny_ssl"], "batch_size": 16, "device": "cpu"}}
    cfg = config_from_dict(params)
    out = tmp_path / "out"
    (out / "pretrain").mkdir(parents=True)
    (out / "pretrain" / "old.safetensors").write_bytes(b"stale")
    cards = pretrain.run(cfg, out, tmp_path, scene_paths=[str(scene)])
    paths = StudyLayout(out).pretrain
    assert not (out / "pretrain" / "old.safetensors").exists()
    card = json.loads(paths.card("vit_tiny").read_text())
    assert card == json.loads(json.dumps({k: v for k, v in cards["vit_tiny"].items() if k != "timing"}))
    timing = json.loads(StudyLayout(out).pretrain_timing.read_text())
    assert timing["vit_tiny"]["seconds"] > 0 and timing["vit_tiny"]["steps"] == 6
    assert card["training"]["steps"] == 6 and len(card["loss"]["per_step"]) == 6
    assert card["data"]["chips_per_scale"]["a"] > 0 and len(card["data"]["chips_sha256"]) == 64
    assert paths.loss_png("vit_tiny").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths.index.read_text())["encoders"] == ["vit_tiny"]
    # bitwise reproducible for a seed
    first = paths.weights("vit_tiny").read_bytes()
    pretrain.run(cfg, out, tmp_path, scene_paths=[str(scene)])
    assert paths.weights("vit_tiny").read_bytes() == first

    # the embed stage's vit_tiny_ssl is vit_tiny with those weights (and differs from the random init)
    import geopandas as gpd
    from shapely.geometry import Point

    locs = gpd.GeoDataFrame({"location_id": ["x", "y"]}, geometry=[Point(33.0, 0.9), Point(33.0, 0.9)], crs=4326)
    from rasterio.warp import transform as wt

    lon, lat = wt("EPSG:32636", "EPSG:4326", [500000.0 + 2400, 500000.0 + 1200], [100000.0 - 2400, 100000.0 - 3600])
    locs = gpd.GeoDataFrame({"location_id": ["x", "y"]}, geometry=gpd.points_from_xy(lon, lat), crs=4326)
    tile_points(locs, [str(scene)], cfg.tile, out / "tile", progress=False)
    embs = embed_proc.embed_study(out / "tile", cfg.embed, cfg.seed, out / "embed", progress=False,
                                  pretrain_dir=paths.root)
    enc = create_encoder("vit_tiny", in_chans=4, seed=5, weights=paths.weights("vit_tiny"))
    from pipeline.imagery.embedding import embed_chips
    from pipeline.imagery.tiling import read_chip_store

    _, chips, _ = read_chip_store(out / "tile")
    assert np.array_equal(embs[("vit_tiny_ssl", "a")], embed_chips(enc, chips["a"], 16, "cpu"))
    assert not np.array_equal(embs[("vit_tiny_ssl", "a")], embs[("vit_tiny", "a")])
    ecard = json.loads(StudyLayout(out).embed.card("vit_tiny_ssl").read_text())
    assert ecard["name"] == "vit_tiny_ssl" and ecard["weights_file_sha256"] == card["weights_sha256"]

    # without the checkpoint: a named error with the fix
    paths.weights("vit_tiny").unlink()
    with pytest.raises(EncoderError, match="add vit_tiny to pretrain.encoders"):
        embed_proc.embed_study(out / "tile", cfg.embed, cfg.seed, tmp_path / "embed2", progress=False,
                               pretrain_dir=paths.root)


def test_pretrain_stage_without_encoders_writes_only_its_index(tmp_path):
    from pipeline.procedures import pretrain

    cfg = config_from_dict({"tile": {"scales": [{"name": "a", "size_m": 240.0, "px": 8}]}})
    assert pretrain.run(cfg, tmp_path / "out", tmp_path, scene_paths=["never-read.tif"]) == {}
    assert [p.name for p in (tmp_path / "out" / "pretrain").iterdir()] == ["index.json"]


def test_random_positions_cover_every_scene_evenly(tmp_path):
    from pipeline.imagery.scenes import SceneCatalog
    from pipeline.procedures.pretrain import random_positions

    a = write_raster(tmp_path / "a.tif", np.ones((1, 50, 50), dtype=np.float32))
    b = write_raster(tmp_path / "b.tif", np.ones((1, 50, 50), dtype=np.float32), x0=510000.0)
    cat = SceneCatalog.from_paths([str(a), str(b)])
    lon, lat = random_positions(cat, 101, seed=1)
    hits = [len(i) for i in cat.candidates(lon, lat)]
    assert hits == [51, 50]
    lon2, _ = random_positions(cat, 101, seed=1)
    assert np.array_equal(lon, lon2)


def test_rcf_state_is_reused_for_new_chips(tmp_path):
    """Embedding new locations (extrapolation) loads the trial's fitted kernels instead of refitting them."""
    import geopandas as gpd
    from rasterio.warp import transform as wt

    from pipeline.core.layout import EmbeddingPaths
    from pipeline.procedures.embed import embed_study
    from pipeline.procedures.tile import tile_points

    scene = _scene(tmp_path)
    cfg = config_from_dict({"tile": {"radiometry": 0.0001, "scales": [{"name": "a", "size_m": 240.0, "px": 8}]},
                            "embed": {"encoders": ["rcf"], "batch_size": 8, "device": "cpu"}})
    rng = np.random.default_rng(0)
    for name, n in (("trial", 30), ("new", 5)):
        xs, ys = rng.uniform(500000 + 900, 500000 + 3900, n), rng.uniform(100000 - 3900, 100000 - 900, n)
        lon, lat = wt("EPSG:32636", "EPSG:4326", list(xs), list(ys))
        locs = gpd.GeoDataFrame({"location_id": [f"{name}{i}" for i in range(n)]},
                                geometry=gpd.points_from_xy(lon, lat), crs=4326)
        tile_points(locs, [str(scene)], cfg.tile, tmp_path / name, progress=False)
    embed_study(tmp_path / "trial", cfg.embed, 0, tmp_path / "e1", progress=False)
    fitted = EmbeddingPaths(tmp_path / "e1").fitted_state("rcf")
    embed_study(tmp_path / "new", cfg.embed, 0, tmp_path / "e2", progress=False, fitted_from=tmp_path / "e1")
    assert EmbeddingPaths(tmp_path / "e2").fitted_state("rcf").read_bytes() == fitted.read_bytes()
    embed_study(tmp_path / "new", cfg.embed, 0, tmp_path / "e3", progress=False)  # refitted on 5 chips: other kernels
    assert EmbeddingPaths(tmp_path / "e3").fitted_state("rcf").read_bytes() != fitted.read_bytes()
