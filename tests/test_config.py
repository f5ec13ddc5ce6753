"""Params validation: unknown keys, types, ranges, missing file."""

from __future__ import annotations

import pytest
import yaml

from pipeline.core.config import config_from_dict, load_config
from pipeline.core.errors import ConfigError


def test_defaults_and_repo_params_are_valid():
    from conftest import REPO

    cfg = load_config(REPO / "params.yaml")
    assert cfg.cate.n_estimators % 4 == 0
    assert [s.name for s in cfg.tile.scales]


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"cate": {"n_estimator": 100}})
    assert "cate.n_estimator" in exc.value.where
    assert "n_estimators" in exc.value.fix


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"evaluation": {}})
    assert "evaluation" in exc.value.where
    assert "evaluate" in exc.value.fix


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"cate": {"folds": "five"}})
    assert exc.value.where.endswith("cate.folds")


@pytest.mark.parametrize("data, key", [
    ({"cate": {"n_estimators": 102}}, "cate.n_estimators"),
    ({"cate": {"max_samples": 0.8}}, "cate.max_samples"),
    ({"cate": {"propensity": 1.2}}, "cate.propensity"),
    ({"cate": {"mtry": "sqrt"}}, "cate.mtry"),
    ({"cate": {"mtry": 0}}, "cate.mtry"),
    ({"tile": {"scales": [{"name": "a", "size_m": -5.0, "px": 8}]}}, "tile.scales[0].size_m"),
    ({"tile": {"scales": [{"name": "a", "size_m": 100.0, "px": 0}]}}, "tile.scales[0].px"),
    ({"tile": {"scales": [{"name": "a", "size_m": 100.0}]}}, "tile.scales[0]"),
    ({"tile": {"resampling": "cubic"}}, "tile.resampling"),
    ({"evaluate": {"targets": ["AUC"]}}, "evaluate.targets"),
    ({"cate": {"linear_correction": "lasso"}}, "cate.linear_correction"),
    ({"cate": {"linear_correction": "ridge", "learner": "dr_forest"}}, "cate.linear_correction"),
    ({"embed": {"read_threads": -1}}, "embed.read_threads"),
    ({"embed": {"num_workers": -2}}, "embed.num_workers"),
    ({"tile": {"scales": [{"name": ".", "size_m": 100.0, "px": 8}]}}, "tile.scales[0].name"),
    ({"tile": {"scales": [{"name": "..", "size_m": 100.0, "px": 8}]}}, "tile.scales[0].name"),
    ({"tile": {"scales": [{"name": "a\\b", "size_m": 100.0, "px": 8}]}}, "tile.scales[0].name"),
    ({"tile": {"scales": [{"name": "a@j0", "size_m": 100.0, "px": 8}]}}, "tile.scales[0].name"),
    ({"tile": {"scales": [{"name": "", "size_m": 100.0, "px": 8}]}}, "tile.scales[0].name"),
])
def test_invalid_values(data, key):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert key in exc.value.where


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in exc.value.where
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError):
        load_config(bad)
    # YAML is loaded safely: python tags are refused
    evil = tmp_path / "evil.yaml"
    evil.write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        load_config(evil)


def test_config_is_frozen(tiny_params):
    cfg = config_from_dict(tiny_params)
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
    assert yaml.safe_dump(tiny_params)


@pytest.mark.parametrize("depth", [1, 2])
def test_yaml_alias_bomb_is_refused_fast_with_a_short_message(tmp_path, depth):
    """A few hundred bytes of nested YAML aliases expand to billions of values: refused before anything
    walks or prints them, with a one-line message of bounded length (#15 item 8)."""
    import time

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"[: 5 + depth]):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = tmp_path / "params.yaml"  # the last alias holds 10 ** (5 + depth) strings
    path.write_text("\n".join(lines[:-1]) + f"\ntile: {{scales: *{'abcdefghi'[4 + depth]}}}\n")
    assert len(path.read_bytes()) < 1000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert time.perf_counter() - t0 < 5
    assert len(str(exc.value)) < 1500 and "alias" in str(exc.value)


def test_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tile: &t {scales: [*t]}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "alias" in str(exc.value)


def test_error_messages_stay_one_bounded_line():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"seed": "x" * 100_000 + "\nsecond line"})
    assert len(str(exc.value)) < 1500 and "\n" not in str(exc.value)
