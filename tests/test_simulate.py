"""The simulation's designs: the shares design unchanged, the texture design at equal shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.core.config import SimulateConfig
from pipeline.procedures.simulate import SPECTRA, STRIPE_PERIOD_M, simulate_study

SMALL = SimulateConfig(scene_px=384, n_locations=30, units_min=3, units_max=5)


def test_shares_design_pinned():
    """The default design is unchanged by the texture option (a pinned value of its outcomes and truth)."""
    sim = simulate_study(SMALL, 7)
    assert sim.units["Y"].sum() == pytest.approx(PINNED_Y_SUM, abs=1e-9)
    assert sim.truth["tau"].sum() == pytest.approx(PINNED_TAU_SUM, abs=1e-9)


def test_texture_design_holds_shares_equal():
    """Every village has the same number of built-up pixels in its disc whatever their arrangement, and the
    strips' crop share over a window does not follow their orientation: per-band histograms cannot carry
    either modifier."""
    cfg = dataclasses.replace(SMALL, design="texture", scene_px=512)
    sim = simulate_study(cfg, 3)
    res = cfg.pixel_m
    refl = sim.reflectance
    names = list(SPECTRA)
    spectra = np.stack([SPECTRA[k] for k in names])  # each pixel's class: the nearest land-cover spectrum
    cls = np.argmin(((refl[None] - spectra[:, :, None, None]) ** 2).sum(axis=1), axis=0)
    built, crop = cls == names.index("built"), cls == names.index("vegetation")
    truth = sim.truth.drop_duplicates("location_id")
    from pyproj import Transformer

    locs = sim.units.drop_duplicates("location_id")
    xs, ys = Transformer.from_crs(4326, cfg.epsg, always_xy=True).transform(locs.geometry.x, locs.geometry.y)
    cols = ((np.asarray(xs) - cfg.origin_x) / res).astype(int)
    rows = ((cfg.origin_y + cfg.scene_px * res - np.asarray(ys)) / res).astype(int)
    counts = [built[r - 5:r + 6, c - 5:c + 6].sum() for r, c in zip(rows, cols)]
    assert max(counts) - min(counts) <= 1  # equal built-up share (a disc clipped by water may lose a pixel)
    half = int(1920 / res / 2)
    share = np.array([crop[max(r - half, 0):r + half, max(c - half, 0):c + half].mean() for r, c in zip(rows, cols)])
    assert abs(np.corrcoef(share, truth["f_coarse"])[0, 1]) < 0.4 and 0.35 < share.mean() < 0.6
    assert truth["f_fine"].std() > 0.2 and truth["f_coarse"].std() > 0.2
    assert STRIPE_PERIOD_M / res >= 8  # strips wide enough to be seen at 120 m chip pixels


PINNED_Y_SUM = 84.00293174606742  # computed with the code before the texture option
PINNED_TAU_SUM = 115.14175107882474
