"""Synthetic Landsat-like scenes and a cluster-randomized trial with a known, multi-scale CATE.

The scene is a 6-band (blue, green, red, NIR, SWIR1, SWIR2) uint16 GeoTIFF at ``pixel_m`` metres in a UTM
CRS, stored with the Landsat Collection 2 Level-2 surface-reflectance encoding
(reflectance = DN * 2.75e-5 - 0.2, DN 0 = nodata). Its land cover has structure at two spatial scales:

* **fine** (tens to hundreds of metres): settlements (a disc of built-up pixels around each village, of
  random radius and density), smaller distractor settlements and roads between villages;
* **coarse** (kilometres): a smooth vegetation-fraction field and lakes (a thresholded smooth field).

Villages are the trial's locations and clusters; each holds several units. Treatment is randomized by
village. The true CATE of every unit in village v is

    tau_v = tau_base + tau_fine * z(built fraction within fine_window_m of v)
                     + tau_coarse * z(water fraction within coarse_window_m of v),

where z standardises across villages. The built fraction is invisible in a kilometre-wide window (the
village is a fraction of a percent of it) and the water fraction is invisible in a 240 m window (villages
sit at least 300 m from water), so no single scale sees all of tau. The baseline outcome depends on
covariates, on the (coarse) vegetation around the village and on a village random effect, so a learner
must separate prognostic from effect-modifying image content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from scipy import ndimage

from ..core.artifacts import write_with
from ..core.config import SimulateConfig
from ..core.errors import ConfigError

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
L2_SCALE = 2.75e-5
L2_OFFSET = -0.2

# Typical surface reflectance of the land-cover classes, bands as in BANDS.
SPECTRA = {
    "vegetation": np.array([0.030, 0.060, 0.040, 0.350, 0.180, 0.090]),
    "soil": np.array([0.080, 0.110, 0.140, 0.220, 0.300, 0.250]),
    "built": np.array([0.120, 0.130, 0.145, 0.180, 0.240, 0.220]),
    "water": np.array([0.050, 0.060, 0.040, 0.020, 0.010, 0.005]),
}


@dataclass
class SimulatedStudy:
    """Everything the simulation produces, in memory."""

    reflectance: np.ndarray  # (bands, H, W) float32
    transform: rasterio.Affine
    crs: str
    units: gpd.GeoDataFrame
    truth: pd.DataFrame  # unit_id, location_id, tau, f_fine, f_coarse
    # per-pixel land cover of the texture design (built, crop, water masks; orientation = cos(2 theta) of the
    # field strips), and the villages' pixel corners (rows, cols): the scaling study's probe targets
    landcover: dict[str, np.ndarray] = field(default_factory=dict)
    villages_px: tuple[np.ndarray, np.ndarray] | None = None


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return (field - field.mean()) / field.std()


def _window_mean(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int) -> np.ndarray:
    """Mean of ``mask`` over the (2*half) x (2*half) window centred on each (row, col) corner point."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    r0 = np.clip(rows - half, 0, h)
    r1 = np.clip(rows + half, 0, h)
    c0 = np.clip(cols - half, 0, w)
    c1 = np.clip(cols + half, 0, w)
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return total / np.maximum((r1 - r0) * (c1 - c0), 1)


def _draw_line(mask: np.ndarray, r0: int, c0: int, r1: int, c1: int) -> None:
    n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    rr = np.round(np.linspace(r0, r1, n)).astype(int)
    cc = np.round(np.linspace(c0, c1, n)).astype(int)
    mask[rr, cc] = True


STRIPE_PERIOD_M = 480.0  # field strips of the texture design: 240 m of crop, 240 m of bare soil


def _texture_landscape(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                       res: float, water: np.ndarray, coarse_half: int):
    """The texture design's land cover, at equal shares: around every village the same number of built-up
    pixels inside a disc of the same radius, arranged from one compact block (``f_fine`` = 1) to scattered
    pixels (0); and straight field strips of equal crop/soil share, east-west or north-south (theta 0 or 90
    degrees, so strips always cover whole pixels) within farming regions (Voronoi cells about 6 km across),
    ``f_coarse`` = cos(2 theta) averaged over the coarse window (1: all east-west, -1: all north-south).
    Per-band histograms of a window, and so spectral statistics, do not change with either modifier.
    Returns (built mask, crop mask, f_fine, f_coarse, cos(2 theta) per pixel)."""
    size = shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    # orientation constant within farming regions (Voronoi cells about 6 km across), straight strips inside
    n_cells = max(2, int(round((size * res / 6000.0) ** 2)))
    centres = rng.uniform(0, size, (n_cells, 2))
    cell, best = np.zeros(shape, dtype=np.int64), np.full(shape, np.inf)
    for i, (cy, cx) in enumerate(centres):  # nearest centre, one cell at a time (no pixels x cells array)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        cell[d < best] = i
        np.minimum(best, d, out=best)
    theta = (np.pi / 2) * rng.integers(0, 2, n_cells)[cell]  # east-west or north-south: always whole pixels
    # strips: crop where the coordinate across the strips falls in the first half of a period
    across = (xx * np.sin(theta) + yy * np.cos(theta)) * res
    crop = (np.mod(across, STRIPE_PERIOD_M) < STRIPE_PERIOD_M / 2) & ~water
    built = np.zeros(shape, dtype=bool)
    radius = 100.0 / res
    n_built = int(round(0.3 * np.pi * radius ** 2))
    f_fine = rng.uniform(0.0, 1.0, len(rows))
    k = int(np.ceil(radius)) + 1
    for r, c, compact in zip(rows, cols, f_fine):
        r0, r1, c0, c1 = max(r - k, 0), min(r + k + 1, size), max(c - k, 0), min(c + k + 1, size)
        dist = np.hypot(yy[r0:r1, c0:c1] - r, xx[r0:r1, c0:c1] - c)
        inside = np.flatnonzero(dist.ravel() <= radius)
        n_compact = int(round(compact * n_built))
        order = inside[np.argsort(dist.ravel()[inside], kind="stable")]
        chosen = list(order[:n_compact])  # the compact part: the pixels nearest the centre
        rest = np.setdiff1d(inside, chosen)
        chosen += list(rng.choice(rest, n_built - n_compact, replace=False))  # the scattered part
        block = np.zeros(dist.size, dtype=bool)
        block[np.asarray(chosen, dtype=int)] = True
        built[r0:r1, c0:c1] |= block.reshape(dist.shape)
    built &= ~water
    orientation = np.cos(2 * theta)
    f_coarse = _window_mean(orientation, rows, cols, coarse_half)
    return built, crop, f_fine, f_coarse, orientation


def simulate_study(cfg: SimulateConfig, seed: int) -> SimulatedStudy:
    """Generate the scene and the trial. Deterministic for a given ``cfg`` and ``seed``."""
    rng = np.random.default_rng(seed)
    size = cfg.scene_px
    shape = (size, size)
    res = cfg.pixel_m

    veg_z = _smooth_field(rng, shape, sigma_px=1500.0 / res)
    veg_frac = 0.25 + 0.6 / (1.0 + np.exp(-2.0 * veg_z))
    lake_z = _smooth_field(rng, shape, sigma_px=700.0 / res)
    water = lake_z > np.quantile(lake_z, 0.88)

    # Villages: on land, >= 300 m from water, >= 400 m apart, away from the scene edge.
    dist_water_m = ndimage.distance_transform_edt(~water) * res
    margin = int(np.ceil(600.0 / res))
    min_gap = 400.0 / res
    rows, cols = [], []
    attempts = 0
    while len(rows) < cfg.n_locations:
        attempts += 1
        if attempts > 200 * cfg.n_locations:
            raise ConfigError("simulate.n_locations", f"villages that fit the {size} px scene (>= 300 m from water, "
                              ">= 400 m apart)", f"{cfg.n_locations} villages, of which {len(rows)} could be placed",
                              "enlarge simulate.scene_px or lower simulate.n_locations")
        r, c = rng.integers(margin, size - margin, size=2)
        if dist_water_m[r, c] < 300.0:
            continue
        if rows and np.min(np.hypot(np.array(rows) - r, np.array(cols) - c)) < min_gap:
            continue
        rows.append(int(r))
        cols.append(int(c))
    rows = np.array(rows)
    cols = np.array(cols)

    if cfg.design == "texture":
        return _texture_study(cfg, rng, rows, cols, veg_frac, water)

    # Fine-scale structure: settlements of random radius and density, distractors, roads.
    built = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    radius_px = rng.uniform(30.0, 200.0, size=len(rows)) / res
    density = rng.uniform(0.15, 0.95, size=len(rows))
    n_distract = 2 * len(rows)
    d_rows = rng.integers(0, size, n_distract)
    d_cols = rng.integers(0, size, n_distract)
    d_radius = rng.uniform(30.0, 120.0, n_distract) / res
    d_density = rng.uniform(0.2, 0.8, n_distract)
    for r, c, rad, dens in zip(np.r_[rows, d_rows], np.r_[cols, d_cols], np.r_[radius_px, d_radius],
                               np.r_[density, d_density]):
        k = int(np.ceil(rad)) + 1
        r0, r1, c0, c1 = max(r - k, 0), min(r + k + 1, size), max(c - k, 0), min(c + k + 1, size)
        disc = (yy[r0:r1, c0:c1] - r) ** 2 + (xx[r0:r1, c0:c1] - c) ** 2 <= rad ** 2
        built[r0:r1, c0:c1] |= disc & (rng.random(disc.shape) < dens)
    roads = np.zeros(shape, dtype=bool)
    pts = np.column_stack([rows, cols]).astype(float)
    for i in range(len(rows)):
        d = np.hypot(*(pts - pts[i]).T)
        d[i] = np.inf
        j = int(np.argmin(d))
        _draw_line(roads, rows[i], cols[i], rows[j], cols[j])
    built &= ~water
    roads &= ~water

    # Reflectance: vegetation/soil mixture, then built, roads and water, plus sensor noise.
    refl = (veg_frac[None] * SPECTRA["vegetation"][:, None, None]
            + (1 - veg_frac[None]) * SPECTRA["soil"][:, None, None])
    for mask, name in ((built | roads, "built"), (water, "water")):
        refl[:, mask] = SPECTRA[name][:, None]
    refl = refl + rng.normal(0.0, 0.008, size=refl.shape)
    refl = np.clip(refl, 0.0, 1.0).astype(np.float32)

    # Truth: image features at two scales, standardised across villages.
    f_fine = _window_mean(built | roads, rows, cols, int(round(cfg.fine_window_m / res / 2)))
    f_coarse = _window_mean(water, rows, cols, int(round(cfg.coarse_window_m / res / 2)))
    veg_loc = _window_mean(veg_frac, rows, cols, int(round(cfg.coarse_window_m / res / 2)))

    tau_loc = cfg.tau_base + cfg.tau_fine * _z(f_fine) + cfg.tau_coarse * _z(f_coarse)
    return _trial(cfg, rng, rows, cols, tau_loc, veg_loc, refl, f_fine, f_coarse)


def _z(a: np.ndarray) -> np.ndarray:
    sd = a.std()
    return (a - a.mean()) / sd if sd > 0 else np.zeros_like(a)


def _texture_study(cfg: SimulateConfig, rng, rows, cols, veg_frac, water) -> SimulatedStudy:
    """The texture design (:func:`_texture_landscape`): crop strips and bare soil at equal shares, villages of
    equal built-up share, water as in the shares design; the CATE follows arrangement and orientation."""
    res = cfg.pixel_m
    shape = (cfg.scene_px, cfg.scene_px)
    built, crop, f_fine, f_coarse, orientation = _texture_landscape(rng, rows, cols, shape, res, water,
                                                                    int(round(cfg.coarse_window_m / res / 2)))
    refl = np.where(crop[None], SPECTRA["vegetation"][:, None, None], SPECTRA["soil"][:, None, None])
    for mask, name in ((built, "built"), (water, "water")):
        refl[:, mask] = SPECTRA[name][:, None]
    refl = np.clip(refl + rng.normal(0.0, 0.008, size=refl.shape), 0.0, 1.0).astype(np.float32)
    veg_loc = _window_mean(veg_frac, rows, cols, int(round(cfg.coarse_window_m / res / 2)))
    tau_loc = cfg.tau_base + cfg.tau_fine * _z(f_fine) + cfg.tau_coarse * _z(f_coarse)
    # villages at pixel corners: every window (240 m = 8 px, 960 m = 32 px, 3.84 km = 128 px) covers whole
    # native pixels, so resampling never mixes a built-up pixel with its neighbours (which would let per-band
    # statistics see the arrangement through the mixed values)
    study = _trial(cfg, rng, rows, cols, tau_loc, veg_loc, refl, f_fine, f_coarse, centre=0.0)
    study.landcover = {"built": built, "crop": crop, "water": water, "orientation": orientation}
    study.villages_px = (rows, cols)
    return study


def _trial(cfg: SimulateConfig, rng, rows, cols, tau_loc, veg_loc, refl, f_fine, f_coarse,
           centre: float = 0.5) -> SimulatedStudy:
    """Units, cluster (village) randomization, pre-treatment covariates and outcomes around the villages."""
    res = cfg.pixel_m
    size = cfg.scene_px
    # Trial: units per village, cluster (village) randomization, pre-treatment covariates.
    n_loc = len(rows)
    n_per = rng.integers(cfg.units_min, cfg.units_max + 1, size=n_loc)
    loc_of_unit = np.repeat(np.arange(n_loc), n_per)
    n = len(loc_of_unit)
    treated_locs = rng.permutation(n_loc)[: int(round(cfg.treated_share * n_loc))]
    w_loc = np.zeros(n_loc, dtype=int)
    w_loc[treated_locs] = 1
    w = w_loc[loc_of_unit]
    x_age = rng.normal(0.0, 1.0, n)
    x_female = rng.integers(0, 2, n)
    x_hhsize = rng.poisson(4.0, n).astype(float)
    village_effect = rng.normal(0.0, 0.3, n_loc)
    y0 = (0.3 * x_age + 0.2 * x_female + 0.05 * x_hhsize + 0.5 * _z(veg_loc)[loc_of_unit]
          + village_effect[loc_of_unit] + rng.normal(0.0, cfg.noise_sd, n))
    tau = tau_loc[loc_of_unit]
    y = y0 + w * tau

    transform = from_origin(cfg.origin_x, cfg.origin_y + size * res, res, res)
    xs = cfg.origin_x + (cols + centre) * res
    ys = cfg.origin_y + size * res - (rows + centre) * res
    lon, lat = Transformer.from_crs(cfg.epsg, 4326, always_xy=True).transform(xs, ys)
    location_ids = np.array([f"v{i:04d}" for i in range(n_loc)])
    unit_ids = np.array([f"u{i:05d}" for i in range(n)])
    units = gpd.GeoDataFrame(
        {
            "unit_id": unit_ids,
            "location_id": location_ids[loc_of_unit],
            "cluster_id": location_ids[loc_of_unit],
            "W": w.astype(np.int64),
            "Y": y,
            "x_age": x_age,
            "x_female": x_female.astype(np.int64),
            "x_hhsize": x_hhsize,
        },
        geometry=gpd.points_from_xy(np.asarray(lon)[loc_of_unit], np.asarray(lat)[loc_of_unit]),
        crs=4326,
    )
    truth = pd.DataFrame({
        "unit_id": unit_ids,
        "location_id": location_ids[loc_of_unit],
        "tau": tau,
        "f_fine": f_fine[loc_of_unit],
        "f_coarse": f_coarse[loc_of_unit],
    })
    return SimulatedStudy(reflectance=refl, transform=transform, crs=f"EPSG:{cfg.epsg}", units=units,
                          truth=truth)


def write_scene(path: str | os.PathLike, reflectance: np.ndarray, transform, crs: str) -> None:
    """Write reflectance as a Collection 2 Level-2-encoded uint16 GeoTIFF (DN 0 = nodata), atomically."""
    dn = np.clip(np.round((reflectance - L2_OFFSET) / L2_SCALE), 1, 65535).astype(np.uint16)
    nan = ~np.isfinite(reflectance)
    dn[nan] = 0

    def writer(tmp: Path) -> None:
        with rasterio.open(tmp, "w", driver="GTiff", width=dn.shape[2], height=dn.shape[1], count=dn.shape[0],
                           dtype="uint16", crs=crs, transform=transform, nodata=0, tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate") as ds:
            ds.write(dn)
            ds.descriptions = BANDS[: dn.shape[0]]
            ds.scales = [L2_SCALE] * dn.shape[0]
            ds.offsets = [L2_OFFSET] * dn.shape[0]
            ds.update_tags(PRODUCT="simulated Landsat-like Collection 2 Level-2 surface reflectance")

    write_with(path, writer)
