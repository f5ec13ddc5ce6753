"""Multi-scale Concatenation: scale sets, joining, per-scale reduction."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.estimate.concat import concat_features, reduce_embedding, resolve_scale_sets


def test_scale_set_presets():
    scales = ["a", "b", "c"]
    sets = resolve_scale_sets(["singles", "pairs", "all", "a+c"], scales)
    assert list(sets) == ["a", "b", "c", "a+b", "a+c", "b+c", "all"]
    assert sets["all"] == ("a", "b", "c") and sets["a+c"] == ("a", "c")


def test_unknown_scale_in_set():
    with pytest.raises(ConfigError) as exc:
        resolve_scale_sets(["a+z"], ["a", "b"])
    assert "a+z" in exc.value.where and "z" in exc.value.got


def test_concat_joins_location_embeddings_then_covariates():
    emb = {("e", "a"): np.arange(6.0).reshape(3, 2), ("e", "b"): 10 + np.arange(3.0).reshape(3, 1)}
    loc = np.array([2, 0, 0, 1])
    cov = np.array([[7.0], [8.0], [9.0], [6.0]])
    X, names = concat_features(emb, ("a", "b"), ["e"], loc, cov, ["x_k"])
    np.testing.assert_array_equal(X[0], [4, 5, 12, 7])
    np.testing.assert_array_equal(X[2], [0, 1, 10, 9])
    assert names == ["e:a:d0", "e:a:d1", "e:b:d0", "cov:x_k"]


def test_reduction_drops_constant_columns_standardises_and_pca():
    rng = np.random.default_rng(0)
    emb = np.column_stack([rng.normal(size=(50, 5)) * [1, 10, 100, 1, 1], np.ones(50)])
    out, info = reduce_embedding(emb, standardize=True, pca=0, where="e:a")
    assert out.shape == (50, 5) and info["dropped_constant_columns"] == 1
    np.testing.assert_allclose(out.std(axis=0), 1.0)
    pcs, info = reduce_embedding(emb, standardize=True, pca=3, where="e:a")
    assert pcs.shape == (50, 3) and 0 < info["pca_explained_variance"] <= 1
    with pytest.raises(ConfigError) as exc:
        reduce_embedding(emb[:4], standardize=False, pca=6, where="e:a")
    assert exc.value.where == "features.pca"


@pytest.mark.parametrize("learner_name", ["causal_forest", "dr_forest"])
def test_multiscale_learner_wraps_any_learner(learner_name):
    """Wrapping a learner equals fitting it on the joined matrix; scales missing at predict time fail."""
    from pipeline.core.config import CateConfig
    from pipeline.estimate.cate import make_learner
    from pipeline.estimate.concat import MultiScaleLearner

    rng = np.random.default_rng(1)
    n = 400
    fine, coarse = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    W = rng.integers(0, 2, n)
    Y = fine[:, 0] * W + coarse[:, 0] * W + rng.normal(size=n)
    cfg = CateConfig(learner=learner_name, n_estimators=40, nuisance_trees=20, n_jobs=1)
    ms = MultiScaleLearner(make_learner(cfg, 3), scale_set=["fine", "coarse"]).fit(
        Y, W, X={"fine": fine, "coarse": coarse})
    direct = make_learner(cfg, 3).fit(Y, W, X=np.hstack([fine, coarse]))
    np.testing.assert_allclose(ms.effect({"fine": fine, "coarse": coarse}), direct.effect(np.hstack([fine, coarse])))
    lo, hi = ms.effect_interval({"fine": fine, "coarse": coarse})
    assert np.all(lo <= hi)
    with pytest.raises(ConfigError):
        ms.effect({"fine": fine})
    reduced = MultiScaleLearner(make_learner(cfg, 3), standardize=True, pca=2).fit(
        Y, W, X={"fine": fine, "coarse": coarse})
    assert reduced.effect({"fine": fine, "coarse": coarse}).shape[0] == n


def test_multiscale_learner_defaults_to_the_pipeline_estimator_and_clones():
    from sklearn.base import clone

    from pipeline.estimate.cate import CausalForestCATE
    from pipeline.estimate.concat import MultiScaleLearner

    ms = MultiScaleLearner(CausalForestCATE(n_estimators=24, nuisance_trees=10, n_jobs=1), scale_set=["a", "b"])
    assert clone(ms).get_params()["learner__n_estimators"] == 24
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(120, 2)), rng.normal(size=(120, 1))
    W = rng.integers(0, 2, 120)
    Y = a[:, 0] * W + rng.normal(size=120)
    fitted = ms.fit(Y, W, X={"a": a, "b": b})
    assert isinstance(fitted.learner_, CausalForestCATE) and fitted.learner_ is not ms.learner
    assert not hasattr(ms.learner, "final_")  # the given learner is never fitted
    assert isinstance(MultiScaleLearner().fit(Y, W, X={"a": a}).learner_, CausalForestCATE)


def test_encoder_pca_reduces_only_the_named_encoder(tmp_path):
    import json

    from pipeline.core.artifacts import write_npy
    from pipeline.core.config import EncoderPcaConfig, FeaturesConfig, load_config
    from pipeline.core.layout import EmbeddingPaths
    from pipeline.procedures.features import location_embeddings

    rng = np.random.default_rng(0)
    embed = EmbeddingPaths(tmp_path)
    for enc, dim in (("spectral", 5), ("learned", 12)):
        (tmp_path / enc).mkdir()
        (tmp_path / enc / "feature_names.json").write_text(json.dumps([f"{enc}{i}" for i in range(dim)]))
        for s in ("a", "b"):
            write_npy(embed.array(enc, s), rng.normal(size=(30, dim)))
    cfg = FeaturesConfig(encoders=("spectral", "learned"), encoder_pca=(EncoderPcaConfig("learned", 3),))
    emb, names, info = location_embeddings(embed, cfg.encoders, ["a", "b"], {}, cfg)
    assert emb[("spectral", "a")].shape == (30, 5) and names[("spectral", "b")][0] == "spectral0"
    assert emb[("learned", "a")].shape == (30, 3) and names[("learned", "b")] == ["pc0", "pc1", "pc2"]
    assert "learned:a" in info and "spectral:a" not in info
    # the first component is the top principal axis of the raw block
    raw = np.load(embed.array("learned", "a"))
    top = np.linalg.svd(raw - raw.mean(axis=0), full_matrices=False)[0][:, 0]
    assert abs(np.corrcoef(top, emb[("learned", "a")][:, 0])[0, 1]) > 0.999

    too_many = FeaturesConfig(encoders=("learned",), encoder_pca=(EncoderPcaConfig("learned", 40),))
    with pytest.raises(ConfigError) as exc:
        location_embeddings(embed, too_many.encoders, ["a"], {}, too_many)
    assert exc.value.where == "features.encoder_pca[0].pca"

    bad = tmp_path / "params.yaml"
    bad.write_text("features:\n  encoders: [spectral]\n  encoder_pca: [{encoder: learned, pca: 3}]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert "encoder_pca[0].encoder" in exc.value.where and "learned" in exc.value.got
