"""Tiling: chips equal direct reads, edges give the right valid fraction, CRSs, resampling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from conftest import SHARED_DATA, write_raster
from pipeline.config import ScaleConfig
from pipeline.errors import ImageryError, TilingError
from pipeline.imagery import SceneCatalog, open_scene, to_reflectance
from pipeline.tiling import area_weights, tile_locations


def lonlat(crs, x, y):
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(x, y)
    return np.atleast_1d(lon), np.atleast_1d(lat)


def test_area_weights_rows_and_total():
    first, w = area_weights(3.25, 8.5, 5)
    assert first == 3
    np.testing.assert_allclose(w.sum(axis=1), 8.5 / 5)
    assert w.sum() == pytest.approx(8.5)
    assert w.shape == (5, 9)


def test_aligned_chip_equals_direct_read(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    x, y = 500000.0 + 20 * 30, 100000.0 - 30 * 30
    lon, lat = lonlat("EPSG:32636", x, y)
    for method in ("average", "nearest"):
        cs = tile_locations(cat, ["a"], lon, lat, [ScaleConfig("s", 240.0, 8)], method)
        with rasterio.open(ramp_raster) as ds:
            direct = ds.read(window=Window(16, 26, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(cs.chips["s"][0], direct, rtol=0, atol=1e-3)
        assert cs.manifest["valid_fraction"].iloc[0] == pytest.approx(1.0)


def test_block_average(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    lon, lat = lonlat("EPSG:32636", 500000.0 + 20 * 30, 100000.0 - 30 * 30)
    cs = tile_locations(cat, ["a"], lon, lat, [ScaleConfig("s", 240.0, 4)])
    with rasterio.open(ramp_raster) as ds:
        direct = ds.read(window=Window(16, 26, 8, 8)).astype(np.float64)
    expected = direct.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(cs.chips["s"][0], expected, atol=1e-3)


def test_fractional_window_is_not_shifted(ramp_raster):
    """A window starting half a pixel off the grid averages the overlapped pixels with half weights."""
    cat = SceneCatalog.from_paths([ramp_raster])
    x, y = 500000.0 + 20 * 30 + 15, 100000.0 - 30 * 30  # centre on a pixel centre in x
    lon, lat = lonlat("EPSG:32636", x, y)
    cs = tile_locations(cat, ["a"], lon, lat, [ScaleConfig("s", 60.0, 1)])
    with rasterio.open(ramp_raster) as ds:
        block = ds.read(1, window=Window(19, 29, 3, 2)).astype(np.float64)
    expected = (0.5 * block[:, 0] + block[:, 1] + 0.5 * block[:, 2]).sum() / 4.0
    assert cs.chips["s"][0, 0, 0, 0] == pytest.approx(expected, abs=1e-3)


def test_edge_valid_fraction_and_padding(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    # a point 1 m inside the top-left corner: the 240 m window is a quarter inside the raster
    lon, lat = lonlat("EPSG:32636", 500000.0 + 1.0, 100000.0 - 1.0)
    cs = tile_locations(cat, ["a"], lon, lat, [ScaleConfig("s", 240.0, 8)], "nearest")
    vf = cs.manifest["valid_fraction"].iloc[0]
    assert vf == pytest.approx(((120 + 1) / 240) ** 2, abs=1e-6)
    chip = cs.chips["s"][0]
    assert np.isnan(chip[:, :4, :]).all() and np.isnan(chip[:, :, :4]).all()
    with rasterio.open(ramp_raster) as ds:
        direct = ds.read(window=Window(0, 0, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(chip[:, 4:, 4:], direct, atol=1e-3)


def test_other_utm_zone_and_l2_scaling(tmp_path):
    """A scene in UTM 35S with L2 scale/offset and nodata: the point lands on the expected pixel."""
    data = np.full((2, 40, 40), 10000, dtype=np.uint16)
    data[:, 20, 13] = 20000
    data[:, 0, :] = 0
    path = write_raster(tmp_path / "l2.tif", data, crs="EPSG:32735", x0=300000.0, y0=9900000.0, nodata=0,
                        scales=[2.75e-5, 2.75e-5], offsets=[-0.2, -0.2])
    scene = open_scene(path)
    refl = to_reflectance(data, scene)
    assert refl[0, 5, 5] == pytest.approx(10000 * 2.75e-5 - 0.2, rel=1e-6)
    assert np.isnan(refl[:, 0]).all()
    x, y = 300000.0 + 13.5 * 30, 9900000.0 - 20.5 * 30
    lon, lat = lonlat("EPSG:32735", x, y)
    cs = tile_locations(SceneCatalog([scene]), ["a"], lon, lat, [ScaleConfig("s", 30.0, 1)])
    assert cs.chips["s"][0, 0, 0, 0] == pytest.approx(20000 * 2.75e-5 - 0.2, rel=1e-5)
    # the window over the nodata row has a valid fraction below one
    lon2, lat2 = lonlat("EPSG:32735", 300000.0 + 10 * 30, 9900000.0 - 1 * 30)
    cs2 = tile_locations(SceneCatalog([scene]), ["b"], lon2, lat2, [ScaleConfig("s", 120.0, 4)])
    # rows -1 (outside), 0 (nodata), 1 and 2 (valid): half the window
    assert cs2.manifest["valid_fraction"].iloc[0] == pytest.approx(0.5, abs=1e-6)


def test_best_scene_chosen_by_valid_fraction(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.ones((1, 20, 20), np.float32), x0=500000.0, y0=100000.0)
    b = write_raster(tmp_path / "b.tif", np.full((1, 20, 20), 2.0, np.float32), x0=500300.0, y0=100000.0)
    cat = SceneCatalog.from_paths([a, b])
    lon, lat = lonlat("EPSG:32636", 500000.0 + 19 * 30, 100000.0 - 10 * 30)  # inside a, near its east edge
    cs = tile_locations(cat, ["p"], lon, lat, [ScaleConfig("s", 240.0, 4)])
    assert cs.manifest["scene"].iloc[0].endswith("b.tif")
    assert cs.manifest["valid_fraction"].iloc[0] == pytest.approx(1.0)


def test_window_smaller_than_pixel(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    lon, lat = lonlat("EPSG:32636", 500600.0, 99100.0)
    with pytest.raises(TilingError) as exc:
        tile_locations(cat, ["a"], lon, lat, [ScaleConfig("tiny", 10.0, 4)])
    assert "tiny" in exc.value.where


def test_point_outside_and_swapped(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    lon, lat = lonlat("EPSG:32636", 500600.0, 99100.0)
    with pytest.raises(ImageryError) as exc:
        tile_locations(cat, ["ok", "swapped"], np.r_[lon, lat], np.r_[lat, lon], [ScaleConfig("s", 240.0, 8)])
    assert "swapped" in exc.value.got and "lon and lat are swapped" in exc.value.got


def test_corrupt_nocrs_and_band_mismatch(tmp_path, ramp_raster):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(ImageryError) as exc:
        open_scene(bad)
    assert "corrupt.tif" in exc.value.where
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ImageryError) as exc:
        open_scene(nocrs)
    assert "CRS" in exc.value.got
    one = write_raster(tmp_path / "one.tif", np.ones((1, 8, 8), np.float32))
    with pytest.raises(ImageryError) as exc:
        SceneCatalog.from_paths([ramp_raster, one])
    assert "band count" in exc.value.expected


@pytest.mark.skipif(not (SHARED_DATA / "scikit_eo_landsat8").is_dir(), reason="shared data folder absent")
def test_real_peru_clip_chip_equals_direct_read():
    path = SHARED_DATA / "scikit_eo_landsat8" / "LC08_003069_20180906_clip.tif"
    scene = open_scene(path)
    a = scene.affine
    col, row = 40, 30
    x, y = a.c + col * a.a, a.f + row * a.e  # a pixel corner: an aligned 10-pixel window
    lon, lat = lonlat(scene.crs, x, y)
    cs = tile_locations(SceneCatalog([scene]), ["p"], lon, lat, [ScaleConfig("s", 300.0, 10)])
    with rasterio.open(path) as ds:
        direct = ds.read(window=Window(col - 5, row - 5, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(cs.chips["s"][0], direct, atol=1e-2)
