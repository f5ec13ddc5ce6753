"""Procedures ``prepare`` (the simulation) and ``ingest`` (a real study's units file)."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd

from ..core.artifacts import write_json, write_with
from ..core.config import Config
from ..core.errors import warn_all
from ..core.layout import StudyLayout
from ..core.units import load_study_units, validate_units, write_units
from ..estimate.cate import check_trial_design
from ..imagery.scenes import SceneCatalog
from .simulate import simulate_study, write_scene


def prepare(cfg: Config, out: str | os.PathLike) -> gpd.GeoDataFrame:
    """Simulate the default study (``cfg.simulate``, ``cfg.seed``): write the scene, its footprint index and
    the units, and the true CATE apart from them (read only by evaluation)."""
    layout = StudyLayout(out)
    study = simulate_study(cfg.simulate, cfg.seed)
    units = validate_units(study.units, source="simulated units")
    scene_path = layout.simulated_scene(0)
    write_scene(scene_path, study.reflectance, study.transform, study.crs)
    catalog = SceneCatalog.from_paths([scene_path])
    write_with(layout.simulated_scene_index, lambda tmp: catalog.footprints().to_parquet(tmp, index=False))
    write_units(units, layout.units)
    write_with(layout.truth, lambda tmp: study.truth.to_parquet(tmp, index=False))
    return units


def ingest(cfg: Config, out: str | os.PathLike, params_dir: str | os.PathLike) -> tuple[gpd.GeoDataFrame, dict]:
    """Read a real study's units file (``cfg.data``, paths relative to ``params_dir``), validate it and
    write ``units.parquet`` and the ingest report (rows read, recoded, imputed, dropped)."""
    layout = StudyLayout(out)
    units, report = load_study_units(cfg.data, Path(params_dir))
    report["warnings"] = warn_all(report.get("warnings", []))
    # the cross-fitting design is checked now, before tiling and embedding, on the folds the cate stage will use
    check_trial_design(units["W"].to_numpy(), units["cluster_id"].astype(str).to_numpy(), cfg.cate.folds, cfg.seed)
    write_units(units, layout.units)
    write_json(layout.ingest_report, report)
    return units, report
