"""The scaling study's quality part: chips and targets, the linear probe, the time-to-error verdict, and a small
CPU run of the whole stage (every scaled encoder pretrained with the same images seen, probed, reported)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import QualityConfig, SimulateConfig, config_from_dict
from pipeline.core.errors import ConfigError
from pipeline.procedures.quality import (
    _interp_crossing,
    cut_windows,
    probe_errors,
    random_corners,
    time_to_error,
    verdict,
    window_fraction,
)


def test_windows_and_fractions_against_brute_force():
    rng = np.random.default_rng(0)
    img = rng.random((3, 40, 40)).astype(np.float32)
    mask = rng.random((40, 40)) < 0.3
    for px in (4, 7, 10):
        rows, cols = random_corners(rng, 25, 40, px)
        chips = cut_windows(img, rows, cols, px)
        frac = window_fraction(mask, rows, cols, px)
        for i, (r, c) in enumerate(zip(rows, cols)):
            r0, c0 = r - px // 2, c - px // 2
            assert r0 >= 0 and c0 >= 0 and r0 + px <= 40 and c0 + px <= 40
            np.testing.assert_array_equal(chips[i], img[:, r0:r0 + px, c0:c0 + px])
            assert frac[i] == pytest.approx(mask[r0:r0 + px, c0:c0 + px].mean(), abs=1e-12)


def test_texture_landcover_is_the_truth_the_trial_uses():
    """The exposed land cover reproduces the texture design's coarse modifier at the villages."""
    from pipeline.procedures.simulate import _window_mean, simulate_study

    cfg = SimulateConfig(design="texture", scene_px=256, n_locations=30)
    sim = simulate_study(cfg, 3)
    rows, cols = sim.villages_px
    half = int(round(cfg.coarse_window_m / cfg.pixel_m / 2))
    per_village = sim.truth.drop_duplicates("location_id").sort_values("location_id")
    np.testing.assert_allclose(_window_mean(sim.landcover["orientation"], rows, cols, half),
                               per_village["f_coarse"].to_numpy())
    assert not (sim.landcover["built"] & sim.landcover["water"]).any()
    assert set(np.unique(sim.landcover["orientation"])) <= {-1.0, 1.0}
    # the shares design exposes none of it (its trial is unchanged)
    assert simulate_study(SimulateConfig(scene_px=256, n_locations=30), 3).landcover == {}


def _probe_data(n=300, p=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    beta = rng.standard_normal(p)
    return rng, X, beta


def test_probe_exact_linear_target_has_no_error_and_noise_has_error_one():
    rng, X, beta = _probe_data()
    t = pd.DataFrame({"linear": X @ beta, "noise": rng.standard_normal(len(X))})
    e = probe_errors(X, t, folds=5, seed=0)
    assert e["linear"] < 1e-3
    assert 0.95 < e["noise"] < 1.2  # a probe of noise explains nothing out of fold (and pays its variance)


def test_probe_error_matches_a_hand_written_cross_validated_ridge():
    """Brute force: the same folds, standardisation on the training part and leave-one-out choice of the
    penalty written out with NumPy."""
    from sklearn.model_selection import KFold

    from pipeline.procedures.quality import ALPHAS

    rng, X, beta = _probe_data(n=120, p=6, seed=1)
    y = X @ beta + rng.standard_normal(len(X)) * 2.0
    pred = np.empty_like(y)
    for tr, te in KFold(4, shuffle=True, random_state=7).split(X):
        mu, sd = X[tr].mean(0), X[tr].std(0)
        Z, Zt = (X[tr] - mu) / sd, (X[te] - mu) / sd
        Zc, yc = Z - Z.mean(0), y[tr] - y[tr].mean()

        def loo(a):
            H = Zc @ np.linalg.solve(Zc.T @ Zc + a * np.eye(Z.shape[1]), Zc.T)
            r = (yc - H @ yc) / (1 - np.diag(H) - 1.0 / len(tr))
            return float((r ** 2).mean())

        a = min(ALPHAS, key=loo)
        b = np.linalg.solve(Zc.T @ Zc + a * np.eye(Z.shape[1]), Zc.T @ yc)
        pred[te] = y[tr].mean() + (Zt - Z.mean(0)) @ b
    brute = ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert probe_errors(X, pd.DataFrame({"y": y}), folds=4, seed=7)["y"] == pytest.approx(brute, rel=1e-6)


def test_probe_is_invariant_to_affine_feature_changes_and_pinned():
    rng, X, beta = _probe_data(n=200, p=8, seed=2)
    t = pd.DataFrame({"y": X @ beta + rng.standard_normal(len(X))})
    e = probe_errors(X, t, folds=5, seed=0)["y"]
    scaled = X * rng.uniform(0.1, 10.0, X.shape[1]) + rng.uniform(-5, 5, X.shape[1])
    assert probe_errors(scaled, t, folds=5, seed=0)["y"] == pytest.approx(e, rel=1e-8)
    assert e == pytest.approx(0.32887921228612377, rel=1e-9)  # about 1 / (1 + |beta|^2) = 0.344


def test_probe_refuses_nan_features():
    X = np.ones((20, 3))
    X[3, 1] = np.nan
    with pytest.raises(ConfigError, match="finite features"):
        probe_errors(X, pd.DataFrame({"y": np.arange(20.0)}), folds=2, seed=0)


def test_time_to_error_interpolates_log_linearly_and_says_when_never_reached():
    xs, errs = np.array([1.0, 2.0, 8.0]), np.array([0.5, 0.4, 0.2])
    assert _interp_crossing(xs, errs, 0.6) == 1.0
    assert _interp_crossing(xs, errs, 0.4) == pytest.approx(2.0)
    assert _interp_crossing(xs, errs, 0.3) == pytest.approx(4.0)  # halfway in log between 2 and 8
    assert _interp_crossing(xs, errs, 0.1) == float("inf")
    curves = {"a": pd.DataFrame({"pretrain_s": xs, "error": errs}),
              "b": pd.DataFrame({"pretrain_s": xs, "error": [0.5, 0.45, 0.45]})}
    assert time_to_error(curves, 0.3, "pretrain_s") == {"a": pytest.approx(4.0), "b": None}


def test_verdict_names_the_strategy_that_reaches_the_common_error_first():
    base = {"base": "v", "strategy": "base", "s": 1.0, "error": 0.50, "pretrain_s": 10.0, "flops": 1e6}
    rows = [base]
    for st, (e2, t2), (e4, t4) in (("d", (0.48, 25.0), (0.45, 60.0)), ("dWr", (0.44, 15.0), (0.40, 30.0)),
                                   ("w", (0.47, 14.0), (0.42, 24.0))):
        rows += [{"base": "v", "strategy": st, "s": 2.0, "error": e2, "pretrain_s": t2, "flops": 2e6},
                 {"base": "v", "strategy": st, "s": 4.0, "error": e4, "pretrain_s": t4, "flops": 4e6}]
    v = verdict(pd.DataFrame(rows), ["d", "dWr", "w"])["v"]
    assert v["target_error"] == pytest.approx(np.median([0.48, 0.45, 0.44, 0.40, 0.47, 0.42]))  # 0.445
    # dWr: 0.445 between 10 s (0.50) and 15 s (0.44); w: between 14 s (0.47) and 24 s (0.42); d never
    assert v["fastest"] == "dWr" and v["dWr_fastest"] and v["fewest_flops"] == "dWr"
    assert v["seconds_to_target"]["d"] is None
    assert 10 < v["seconds_to_target"]["dWr"] < 15 < v["seconds_to_target"]["w"] < 24


def test_quality_config_is_validated():
    with pytest.raises(ConfigError, match="quality.factors"):
        config_from_dict({"quality": {"factors": [2.0, 4.0]}})
    with pytest.raises(ConfigError, match="quality.strategies"):
        config_from_dict({"quality": {"strategies": ["dWx"]}})
    with pytest.raises(ConfigError, match="coarse_px"):
        config_from_dict({"quality": {"scene_px": 128, "coarse_px": 64}})


def test_small_quality_study_on_the_cpu_and_its_report(tmp_path):
    """The CPU version: every scaled model sees the same images; FLOPs grow with s; the table, metrics,
    both figures and the report section are written; the stage's command line runs it from a params file."""
    import yaml

    from pipeline.report.document import write_report
    from pipeline.stages.quality import main

    q = {"bases": ["vit_tiny"], "strategies": ["d", "dWr"], "factors": [1.0, 2.0], "scene_px": 192,
         "n_villages": 16, "coarse_px": 32, "fine_px": 8, "train_chips": 32, "probe_chips": 32, "steps": 3,
         "batch_size": 16, "probe_folds": 2, "seeds": [0], "device": "cpu"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "quality": q}))
    assert main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")]) == 0
    root = tmp_path / "out" / "quality"
    table = pd.read_csv(root / "table.csv")
    assert list(table["strategy"]) == ["spectral", "init", "base", "d", "dWr"]
    trained = table[table["strategy"].isin(["base", "d", "dWr"])]
    assert (trained["images_seen"] == 3 * 16).all()
    assert (trained["flops"].iloc[1:] > trained["flops"].iloc[0] * 1.3).all()  # s = 2 after rounding
    assert np.isfinite(table["error"]).all() and (table["error"] > 0).all()
    m = json.loads((root / "metrics.json").read_text())
    assert m["images_seen"] == 48 and set(m["verdict"]["vit_tiny"]["seconds_to_target"]) == {"d", "dWr"}
    for against in ("flops", "time"):
        assert (root / f"error_vs_{against}.png").read_bytes()[:4] == b"\x89PNG"
    html = write_report(tmp_path / "out", tmp_path / "report.html", title="scaling").read_text()
    assert "probe error against compute" in html and html.count("data:image/png;base64,") == 2
    assert "pretraining images/s" in html


def test_models_that_rounding_makes_identical_are_trained_once_and_named(tmp_path):
    """resnet_tiny (one block per stage, width 16) is too coarse for s = 2: dw rounds back to the base."""
    from pipeline.procedures.quality import run_quality_study

    cfg = QualityConfig(bases=("resnet_tiny",), strategies=("dw", "w"), factors=(1.0, 2.0), scene_px=192,
                        n_villages=16, coarse_px=32, fine_px=8, train_chips=32, probe_chips=32, steps=2,
                        batch_size=16, probe_folds=2, device="cpu")
    m = run_quality_study(cfg, 0, tmp_path, progress=False)
    t = pd.read_csv(tmp_path / "table.csv").fillna("")
    dw = t[t["strategy"] == "dw"].iloc[0]
    base = t[t["strategy"] == "base"].iloc[0]
    assert dw["same_model_as"] == "base 1" and dw["error"] == base["error"] and dw["flops"] == base["flops"]
    assert t[t["strategy"] == "w"].iloc[0]["same_model_as"] == ""
    assert m["same_model"] == ["resnet_tiny dw 2 = base 1"]
