"""Real studies: Uganda on a subset of locations (real data), ingestion rules, post-treatment guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, SHARED_DATA

from pipeline.core.config import ConfigError, config_from_dict
from pipeline.core.errors import UnitsError
from pipeline.core.units import load_study_units

UGANDA = SHARED_DATA / "causalimages_uganda_yop"
needs_uganda = pytest.mark.skipif(not UGANDA.is_dir(), reason=f"Uganda data absent at {UGANDA}")


def run_small(p: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Shrink a study's forests, write its params and run every stage of a real study; (params, out)."""
    from pipeline.stages import cate, embed, evaluate, features, ingest, tile

    p["cate"].update({"folds": 3, "n_estimators": 24, "nuisance_trees": 20, "n_jobs": 1})
    p["evaluate"]["n_boot"] = 30
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p))
    out = tmp_path / "out"
    for stage in (ingest, tile, embed, features, cate, evaluate):
        assert stage.main(["--params", str(params), "--out", str(out)]) == 0, stage.__name__
    return params, out


def uganda_params() -> dict:
    return yaml.safe_load((REPO / "studies" / "uganda" / "params.yaml").read_text())


def test_uganda_params_are_valid_and_declare_post_treatment():
    cfg = config_from_dict(uganda_params())
    assert set(cfg.data.post_treatment) == {"X1", "X3", "X5", "X7"}
    assert not set(cfg.data.covariates) & set(cfg.data.post_treatment)


@pytest.mark.parametrize("col", ["X1", "X3", "X5", "X7"])
def test_post_treatment_columns_rejected_as_covariates(col):
    p = uganda_params()
    p["data"]["covariates"] = ["x_bin1", col]
    with pytest.raises(ConfigError) as exc:
        config_from_dict(p)
    assert exc.value.where.endswith("data.covariates") and col in exc.value.got


def test_missing_data_folder_says_where_to_get_it(tmp_path, monkeypatch):
    p = uganda_params()
    p["data"]["root"] = "nowhere"
    monkeypatch.delenv("MSCATE_UGANDA_DATA", raising=False)
    cfg = config_from_dict(p)
    with pytest.raises(UnitsError) as exc:
        load_study_units(cfg.data, tmp_path)
    assert "nowhere" in exc.value.where and "MSCATE_UGANDA_DATA" in exc.value.fix


def fake_study(tmp_path, rows, **data):
    root = tmp_path / "data"
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "units.csv", index=False)
    cfg = {"data": {"root": str(root), "units": "units.csv",
                    "columns": {"unit_id": "id", "location_id": "v", "cluster_id": "v", "W": "treat",
                                "Y": "y", "lon": "lon", "lat": "lat"}, **data}}
    return config_from_dict(cfg).data


def rows(n=16, **over):
    base = {"id": [f"u{i}" for i in range(n)], "v": [i // 2 for i in range(n)],
            "treat": ["Treatment" if (i // 2) % 2 else "Control" for i in range(n)],
            "y": np.linspace(0, 1, n), "lon": [33.0 + (i // 2) * 0.01 for i in range(n)], "lat": [2.0] * n,
            "age": np.arange(n, dtype=float)}
    base.update(over)
    return base


def test_string_treatment_codes_and_unknown_codes(tmp_path):
    cfg = fake_study(tmp_path, rows(), treated_codes=["Treatment"], control_codes=["Control"], covariates=["age"])
    units, report = load_study_units(cfg, tmp_path)
    assert units["W"].tolist()[:4] == [0, 0, 1, 1]
    assert "x_age" in units.columns
    bad = rows()
    bad["treat"][3] = "treated?"
    cfg = fake_study(tmp_path / "b", bad, treated_codes=["Treatment"], control_codes=["Control"])
    with pytest.raises(UnitsError) as exc:
        load_study_units(cfg, tmp_path)
    assert "treated?" in exc.value.got


def test_missing_outcome_policy_and_duplicates(tmp_path):
    y = list(np.linspace(0, 1, 16))
    y[5] = np.nan
    base = rows(y=y, treat=[(i // 2) % 2 for i in range(16)])
    with pytest.raises(UnitsError) as exc:
        load_study_units(fake_study(tmp_path / "a", base), tmp_path)
    assert "1 of 16 missing" in exc.value.got
    units, report = load_study_units(fake_study(tmp_path / "b", base, missing_outcome="drop"), tmp_path)
    assert len(units) == 15 and report["dropped_missing_outcome"] == 1
    dup = rows(treat=[(i // 2) % 2 for i in range(16)])
    dup["id"][1] = "u0"
    with pytest.raises(UnitsError) as exc:
        load_study_units(fake_study(tmp_path / "c", dup), tmp_path)
    assert exc.value.where.endswith("unit_id")


def test_wrong_column_name_suggests(tmp_path):
    cfg = fake_study(tmp_path, rows(treat=[(i // 2) % 2 for i in range(16)]), covariates=["agee"])
    with pytest.raises(UnitsError) as exc:
        load_study_units(cfg, tmp_path)
    assert "agee" in exc.value.expected and "age" in exc.value.fix


@needs_uganda
def test_uganda_subset_end_to_end(tmp_path):
    """The Uganda study's own params on 24 real locations, with small forests: every stage runs."""
    units = pd.read_csv(UGANDA / "tutorial_units.csv")
    keys = sorted(units["image_key"].unique())[:24]
    units[units["image_key"].isin(keys)].to_csv(tmp_path / "subset.csv", index=False)
    p = uganda_params()
    p["data"]["root"] = str(UGANDA)
    p["data"]["units"] = str(tmp_path / "subset.csv")
    p["data"]["scenes"] = [f"chips_351px/GeoKey{k}.tif" for k in keys]
    p["embed"]["encoders"] = list(p["features"]["encoders"])  # the encoders the study joins (no pretraining here)
    params, out = run_small(p, tmp_path)
    report = json.loads((out / "prepare" / "ingest.json").read_text())
    assert report["n_locations"] == 24
    manifest = pd.read_parquet(out / "tile" / "manifest.parquet")
    whole = manifest[manifest["scale"] == "s5002m"]
    assert whole["valid_fraction"].between(0.5, 1.0).all()
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"s456m", "s912m", "s1824m", "s3648m", "s5002m", "all"}
    assert abs(metrics["ate"]["aipw"] - metrics["ate"]["difference_in_means"]) < 0.5
    # extrapolation to non-experimental locations from the 64-px windows (scales <= 912 m only)
    import importlib.util

    import geopandas as gpd

    from pipeline.stages import extrapolate

    spec = importlib.util.spec_from_file_location("nonexp", REPO / "studies" / "uganda" / "nonexperimental.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.write_windows(UGANDA, out / "nonexp") == 991
    locs = gpd.read_parquet(out / "nonexp" / "locations.parquet").iloc[:15]
    locs.to_parquet(out / "nonexp" / "few.parquet")
    scenes = [str(out / "nonexp" / "scenes" / f"NonExp{lid.split('-')[1]}.tif") for lid in locs["location_id"]]
    assert extrapolate.main(["--params", str(params), "--out", str(out), "--locations",
                             str(out / "nonexp" / "few.parquet"), "--scenes", *scenes]) == 0
    pred = gpd.read_parquet(out / "extrapolate" / "extrapolation.parquet")
    assert (pred["kind"] == "extrapolation").sum() == 15 and (pred["kind"] != "extrapolation").sum() == 24
    assert (pred["lower"] <= pred["upper"]).all()


PERU_SCENE = SHARED_DATA / "scikit_eo_landsat8" / "LC08_003069_20180906_clip.tif"


@pytest.mark.skipif(not PERU_SCENE.is_file(), reason=f"Peru Landsat clip absent at {PERU_SCENE}")
def test_peru_semi_synthetic_standin_end_to_end(tmp_path):
    """The Peru study's own params, unchanged but for paths and forest size, on the semi-synthetic stand-in."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_standin", REPO / "studies" / "peru" / "make_standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.make_standin(tmp_path / "data", PERU_SCENE)
    p = yaml.safe_load((REPO / "studies" / "peru" / "params.yaml").read_text())
    p["data"]["root"] = str(tmp_path / "data")
    p["data"]["scenes"] = [str(PERU_SCENE)]
    params, out = run_small(p, tmp_path)
    report = json.loads((out / "prepare" / "ingest.json").read_text())
    assert report["dropped_missing_outcome"] == 3
    assert report["outcome"] == "asset_index_el - asset_index_bl"
    assert report["treatment_codes"] == {"Treatment": 1, "Control": 0}
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"s150m", "s300m", "s600m", "s1200m", "all"}
