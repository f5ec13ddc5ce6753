"""Shared fixtures: a tiny study configuration and small generated rasters."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MSCATE_SHARED_DATA", REPO.parent / "shared" / "data"))

TINY_PARAMS = {
    "seed": 7,
    "simulate": {"scene_px": 384, "n_locations": 40, "units_min": 3, "units_max": 5},
    "tile": {"resampling": "average", "scales": [
        {"name": "s240m", "size_m": 240.0, "px": 8},
        {"name": "s1920m", "size_m": 1920.0, "px": 16},
    ]},
    "pretrain": {"encoders": ["vit_tiny"], "positions": 96, "steps": 12, "batch_size": 16, "device": "cpu"},
    "embed": {"encoders": ["spectral", "vit_tiny", "rcf", "vit_tiny_ssl"], "batch_size": 16, "device": "cpu"},
    "features": {"encoders": ["spectral"], "scale_sets": ["singles", "all"], "covariates": True},
    "cate": {"folds": 3, "n_estimators": 24, "min_samples_leaf": 5, "max_samples": 0.45, "nuisance_trees": 20,
             "propensity": 0.5, "dr_reference": "all", "n_jobs": 1},
    "evaluate": {"targets": ["AUTOC", "QINI"], "n_boot": 50, "q_grid": 5, "reference_set": "all"},
}


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


def write_raster(path, data, *, crs="EPSG:32636", x0=500000.0, y0=100000.0, res=30.0, nodata=None,
                 descriptions=None, scales=None, offsets=None):
    """Write ``data`` (bands, rows, cols) as a GeoTIFF whose upper-left corner is (x0, y0)."""
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=from_origin(x0, y0, res, res), nodata=nodata) as ds:
        ds.write(data)
        if descriptions:
            ds.descriptions = descriptions
        if scales:
            ds.scales = scales
        if offsets:
            ds.offsets = offsets
    return Path(path)


@pytest.fixture
def ramp_raster(tmp_path):
    """A 3-band 64 x 48 float32 raster with distinct values per pixel (UTM 36N, 30 m)."""
    rows, cols = 64, 48
    base = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    data = np.stack([base, base * 2 + 1, base * 3 + 2])
    return write_raster(tmp_path / "ramp.tif", data)
