"""Units table validation."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import UnitsError
from pipeline.core.units import locations_table, read_units, validate_units, write_units


def make_units(n=12):
    return pd.DataFrame({
        "unit_id": [f"u{i}" for i in range(n)],
        "location_id": [f"v{i // 3}" for i in range(n)],
        "cluster_id": [f"v{i // 3}" for i in range(n)],
        "W": [(i // 3) % 2 for i in range(n)],
        "Y": np.linspace(0, 1, n),
        "x_a": np.arange(n, dtype=float),
        "lon": [33.0 + 0.01 * (i // 3) for i in range(n)],
        "lat": [1.5] * n,
    })


def test_valid_units_roundtrip(tmp_path):
    units = validate_units(make_units())
    assert isinstance(units, gpd.GeoDataFrame)
    write_units(units, tmp_path / "u.parquet")
    back = read_units(tmp_path / "u.parquet")
    assert back["unit_id"].tolist() == units["unit_id"].tolist()
    locs = locations_table(back)
    assert locs["location_id"].tolist() == ["v0", "v1", "v2", "v3"]


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.iloc[0:0], "units"),
    (lambda d: d.drop(columns="W"), "units: columns"),
    (lambda d: d.assign(unit_id=["u0"] * len(d)), "units: unit_id"),
    (lambda d: d.assign(W=[2] * len(d)), "units: W"),
    (lambda d: d.assign(W=["treated"] * len(d)), "units: W"),
    (lambda d: d.assign(W=[1] * len(d)), "units: W"),
    (lambda d: d.assign(Y=[1.0] * len(d)), "units: Y"),
    (lambda d: d.assign(Y=[np.nan] + [1.0] * (len(d) - 1)), "units: Y"),
    (lambda d: d.assign(lon=[np.nan] + d["lon"].tolist()[1:]), "units: geometry"),
    (lambda d: d.assign(lat=[500000.0] * len(d)), "units: geometry"),
    (lambda d: d.assign(x_a=["a"] * len(d)), "units: x_a"),
    (lambda d: d.assign(cluster_id=["c"] * len(d)), "units: cluster_id"),
])
def test_bad_units(mutate, where):
    with pytest.raises(UnitsError) as exc:
        validate_units(mutate(make_units()))
    assert exc.value.where == where


def test_post_treatment_covariate_rejected():
    with pytest.raises(UnitsError) as exc:
        validate_units(make_units(), post_treatment=["x_a"])
    assert "x_a" in exc.value.where


def test_missing_file(tmp_path):
    with pytest.raises(UnitsError) as exc:
        read_units(tmp_path / "units.parquet")
    assert "units.parquet" in exc.value.where


def test_location_with_two_coordinates():
    d = make_units()
    d.loc[1, "lon"] = 40.0
    with pytest.raises(UnitsError):
        locations_table(validate_units(d))
