"""Library API for a new RCT: the same functions the DVC stages call, behind one object.

Example (the README walkthrough; executed by the tests)::

    import pipeline as mc

    study = mc.Study("my_study", params={
        "data": {"root": "/data/my_rct", "units": "units.csv", "scenes": ["landsat/*.tif"],
                 "columns": {"unit_id": "hh", "location_id": "village", "cluster_id": "village",
                             "W": "treated", "Y": "consumption", "lon": "lon", "lat": "lat"},
                 "covariates": ["hh_size"]},
        "tile": {"scales": [{"name": "s480m", "size_m": 480, "px": 16},
                            {"name": "s1920m", "size_m": 1920, "px": 32}]},
    })
    result = study.run()
    print(result.rate_table)            # every scale set x AUTOC/QINI: estimate, SE, ratio, interval
    result.cate                         # per-unit CATEs with intervals, as a GeoDataFrame
    result.report("my_study/report.html")

``Study(folder, params=...)`` writes ``folder/params.yaml`` (validated first) and runs the stages'
library functions with ``folder/out`` as the output folder, exactly as ``dvc repro`` of a study created by
``mscate init`` would: the numbers are identical both ways.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import geopandas as gpd
import pandas as pd
import yaml

from .config import Config, config_from_dict, load_config


def load_units(path: str | os.PathLike, *, unit_id: str, location_id: str, treatment: str, outcome: str = "",
               lon: str = "lon", lat: str = "lat", cluster_id: str | None = None, covariates=(),
               post_treatment=(), treated_codes=(), control_codes=(), outcome_difference=(),
               missing_outcome: str = "error", missing_covariates: str = "error") -> tuple[gpd.GeoDataFrame, dict]:
    """Load and validate a units table (CSV with lon/lat, GeoPackage, GeoParquet or Stata) by column names.

    Returns the units in the pipeline's schema (``unit_id``, ``location_id``, ``cluster_id``, ``W``, ``Y``,
    ``x_*`` covariates, point geometry) and a report of what was recoded, imputed or dropped.
    """
    from .sites import load_study_units

    path = Path(path).resolve()
    cfg = config_from_dict({"data": {
        "root": str(path.parent), "units": path.name,
        "columns": {"unit_id": unit_id, "location_id": location_id, "cluster_id": cluster_id or location_id,
                    "W": treatment, "Y": outcome, "lon": lon, "lat": lat},
        "covariates": list(covariates), "post_treatment": list(post_treatment),
        "treated_codes": list(treated_codes), "control_codes": list(control_codes),
        "outcome_difference": list(outcome_difference), "missing_outcome": missing_outcome,
        "missing_covariates": missing_covariates}}, source=str(path)).data
    return load_study_units(cfg, path.parent)


@dataclass
class StudyResult:
    """What a study produced: metrics, the RATE table, TOC curves and per-unit CATEs."""

    out: Path
    metrics: dict
    rate_table: pd.DataFrame
    toc: pd.DataFrame
    cate: gpd.GeoDataFrame

    def report(self, path: str | os.PathLike, title: str = "Study report") -> Path:
        """Write a self-contained HTML report (and a Markdown summary beside it); return the HTML path."""
        from .report import write_report

        return write_report(self.out, path, title=title)


class Study:
    """A study folder (``params.yaml`` + ``out/``) driven from Python; see the module docstring."""

    STAGES = ("prepare", "tile", "embed", "features", "cate", "evaluate")

    def __init__(self, folder: str | os.PathLike, params: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        self.params_path = self.folder / "params.yaml"
        if params is not None:
            cfg = config_from_dict(dict(params), source="params")  # validate before writing anything
            self.folder.mkdir(parents=True, exist_ok=True)
            self.params_path.write_text(yaml.safe_dump(_plain(params), sort_keys=False))
            self.config = cfg
        else:
            self.config = load_config(self.params_path)
        self.out = self.folder / "out"

    @property
    def is_simulation(self) -> bool:
        return not self.config.data.units

    def prepare(self) -> None:
        """Simulate (no ``data.units``) or ingest the units file."""
        from .artifacts import write_json
        from .simulate import prepare_simulation
        from .sites import load_study_units, write_units

        if self.is_simulation:
            prepare_simulation(self.config.simulate, self.config.seed, self.out / "prepare", self.out / "truth.parquet")
        else:
            units, report = load_study_units(self.config.data, self.folder.resolve())
            write_units(units, self.out / "prepare" / "units.parquet")
            write_json(self.out / "prepare" / "ingest.json", report)

    def scene_paths(self) -> list[str]:
        from .imagery import resolve_scene_paths
        from .sites import resolve_data_root

        if self.config.data.scenes:
            root = resolve_data_root(self.config.data, self.folder.resolve())
            return resolve_scene_paths(self.config.data.scenes, base=root)
        return resolve_scene_paths(["*.tif"], base=self.out / "prepare" / "scenes")

    def tile(self) -> None:
        from .tiling import tile_study

        from .compute import dask_client

        with dask_client(self.config.compute) as client:
            tile_study(self.out / "prepare" / "units.parquet", self.scene_paths(), self.config.tile,
                       self.out / "tile", client=client)

    def embed(self) -> None:
        from .embedding import embed_study

        from .compute import dask_client

        with dask_client(self.config.compute) as client:
            embed_study(self.out / "tile", self.config.embed, self.config.seed, self.out / "embed", client=client)

    def features(self) -> None:
        from .concat import build_features

        build_features(self.out / "prepare" / "units.parquet", self.out / "tile", self.out / "embed",
                       self.config.features, self.out / "features")

    def cate(self) -> None:
        from .cate import run_cate

        run_cate(self.out / "prepare" / "units.parquet", self.out / "features", self.config.cate, self.config.seed,
                 self.out / "cate")

    def evaluate(self) -> dict:
        from .evaluate import evaluate_study

        truth = self.out / "truth.parquet"
        return evaluate_study(self.out / "cate", self.config.evaluate, self.config.seed, self.out / "evaluate",
                              truth if truth.exists() else None)

    def run(self) -> StudyResult:
        """Run every stage in order and return the result."""
        for stage in self.STAGES:
            getattr(self, stage)()
        return self.result()

    def result(self) -> StudyResult:
        """Load the outputs of a study that has run (through this API or ``dvc repro``)."""
        return load_result(self.out)


def load_result(out: str | os.PathLike) -> StudyResult:
    """A :class:`StudyResult` from a study's output folder."""
    out = Path(out)
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    rate_table = pd.read_csv(out / "evaluate" / "rate_table.csv")
    toc = pd.read_csv(out / "evaluate" / "toc.csv")
    units = gpd.read_parquet(out / "prepare" / "units.parquet")
    cate = pd.read_parquet(out / "cate" / "cate.parquet")
    merged = units[["unit_id", "location_id", "cluster_id", "W", "Y", "geometry"]].merge(
        cate[["set", "unit_id", "fold", "tau_hat", "lower", "upper"]], on="unit_id")
    return StudyResult(out=out, metrics=metrics, rate_table=rate_table, toc=toc,
                       cate=gpd.GeoDataFrame(merged, geometry="geometry", crs=units.crs))


def _plain(obj):
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = ["Config", "Study", "StudyResult", "load_result", "load_units"]
