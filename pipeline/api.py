"""Library API for a new RCT: the same functions the DVC stages call, behind one object.

Example (the README walkthrough; executed by the tests)::

    import pipeline as mc

    study = mc.Study("my_study", params={
        "data": {"root": "my_rct", "units": "units.csv", "scenes": ["landsat/*.tif"],
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

``Study(folder, params=...)`` writes ``folder/params.yaml`` (validated first; a relative ``data.root`` is
taken from the working directory, as a path typed in Python is, and written absolute) and runs the stages'
library functions with ``folder/out`` as the output folder, exactly as ``dvc repro`` of a study created by
``mscate init`` would: the numbers are identical both ways.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import geopandas as gpd
import yaml

from .core.artifacts import write_json, write_with
from .core.config import ColumnsConfig, Config, DataConfig, config_from_dict, load_config
from .core.layout import StudyLayout, params_digests, study_stages
from .core.layout import StudyResult as _StudyResult
from .core.layout import load_result as _load_result


def load_units(path: str | os.PathLike, *, unit_id: str, location_id: str, treatment: str, outcome: str = "",
               lon: str = ColumnsConfig.lon, lat: str = ColumnsConfig.lat, cluster_id: str | None = None,
               covariates=(), post_treatment=(), treated_codes=(), control_codes=(), outcome_difference=(),
               missing_outcome: str = DataConfig.missing_outcome,
               missing_covariates: str = DataConfig.missing_covariates) -> tuple[gpd.GeoDataFrame, dict]:
    """Load and validate a units table (CSV with lon/lat, GeoPackage, GeoParquet or Stata) by column names.

    Returns the units in the pipeline's schema (``unit_id``, ``location_id``, ``cluster_id``, ``W``, ``Y``,
    ``x_*`` covariates, point geometry) and a report of what was recoded, imputed or dropped.
    """
    from .core.units import load_study_units

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


class StudyResult(_StudyResult):
    """What a study produced: metrics, the RATE table, TOC curves and per-unit CATEs."""

    def report(self, path: str | os.PathLike, title: str = "Study report") -> Path:
        """Write a self-contained HTML report (and a Markdown summary beside it); return the HTML path."""
        from .report.document import write_report

        return write_report(self.out, path, title=title)


def load_result(out: str | os.PathLike, params: str | os.PathLike | None = None) -> StudyResult:
    """A :class:`StudyResult` from a study's output folder (run through this API, the CLI or ``dvc repro``);
    with ``params`` (the study's ``params.yaml``), results made with other params are refused."""
    return _load_result(out, cls=StudyResult, params=params)


class Study:
    """A study folder (``params.yaml`` + ``out/``) driven from Python; see the module docstring.

    Its stages are those of :data:`pipeline.core.layout.STAGES` for the study's kind (``prepare`` for the
    simulation, ``ingest`` for a real study, then tile, embed, features, cate, evaluate), each one call of
    the same procedure that its DVC stage runs.
    """

    def __init__(self, folder: str | os.PathLike, params: Mapping[str, Any] | None = None, learner=None):
        """A study folder, optionally with new params and a CATE learner of one's own.

        Args:
            folder: the study folder (``params.yaml``, ``out/``).
            params: the study's params, validated and written to ``folder/params.yaml``; None reads that file.
            learner: an econml-shaped CATE learner (``fit(Y, T, *, X, groups=None)``, ``effect(X)``, optionally
                ``effect_interval``) used by the cate stage instead of the causal forest: cloned per fold and
                cross-fitted exactly as the forest is; the DR scores keep the project's nuisance models.
        """
        if learner is not None:
            from .estimate.cate import check_learner

            check_learner(learner)
        self.learner = learner
        self.folder = Path(folder)
        self.params_path = self.folder / "params.yaml"
        if params is not None:
            params = _anchor_data_root(params)
            cfg = config_from_dict(dict(params), source="params")  # validate before writing anything
            text = yaml.safe_dump(_plain(params), sort_keys=False)
            write_with(self.params_path, lambda tmp: tmp.write_text(text))  # a typed error if not writable
            self.config = cfg
        else:
            self.config = load_config(self.params_path)
        self.out = self.folder / "out"
        self.layout = StudyLayout(self.out)

    @property
    def is_simulation(self) -> bool:
        return not self.config.data.units

    @property
    def stages(self) -> tuple[str, ...]:
        """The names of this study's stages, in order."""
        return tuple(s.name for s in study_stages("simulation" if self.is_simulation else "real"))

    def prepare(self) -> None:
        """Simulate (no ``data.units``) or ingest the units file."""
        from .procedures.prepare import ingest, prepare

        if self.is_simulation:
            prepare(self.config, self.out)
        else:
            ingest(self.config, self.out, self.folder.resolve())

    ingest = prepare

    def scene_paths(self) -> list[str]:
        """The study's scene files."""
        from .procedures.tile import study_scenes

        return study_scenes(self.config, self.out, self.folder.resolve())

    def tile(self) -> None:
        from .procedures import tile

        tile.run(self.config, self.out, self.folder.resolve())

    def pretrain(self) -> None:
        from .procedures import pretrain

        pretrain.run(self.config, self.out, self.folder.resolve())

    def embed(self) -> None:
        from .procedures import embed

        embed.run(self.config, self.out, params_dir=self.folder.resolve())

    def features(self) -> None:
        from .procedures import features

        features.run(self.config, self.out)

    def cate(self) -> None:
        from .procedures import cate

        cate.run(self.config, self.out, learner=self.learner)

    def evaluate(self) -> dict:
        from .procedures import evaluate

        return evaluate.run(self.config, self.out)

    def run(self) -> StudyResult:
        """Run every stage in order and return the result.

        The previous result is withdrawn first, so a run that fails leaves no result behind to be mistaken
        for its own; the params of a complete run are recorded beside its metrics.
        """
        ev = self.layout.evaluate
        for stale in (ev.run_record, ev.metrics):
            stale.unlink(missing_ok=True)
        for stage in self.stages:
            getattr(self, stage)()
        write_json(ev.run_record, {"params": params_digests(self.config), "learner": self._learner_text()})
        return self.result()

    def _learner_text(self) -> str:
        return "" if self.learner is None else repr(self.learner)

    def unit_features(self, encoder: str = "spectral"):
        """The per-scale embeddings of ``encoder`` as unit-level matrices aligned with the units table (after
        the embed stage): ``(units, {scale: array}, {scale: column names})``, ready for
        :class:`pipeline.estimate.concat.MultiScaleLearner` or a learner of one's own."""
        from .procedures.features import unit_features_by_scale

        return unit_features_by_scale(self.layout.units, self.layout.tile.root, self.layout.embed.root,
                                      self.config.features, encoder)

    def result(self) -> StudyResult:
        """Load the outputs of a study that has run (through this API or ``dvc repro``).

        Raises:
            ArtifactError: when the study has not run, or its results were made with other params than the
                folder's ``params.yaml`` (changed since, or a later run failed).
        """
        record = self.layout.evaluate.run_record
        if record.is_file():
            import json

            from .core.errors import ArtifactError

            made = json.loads(record.read_text()).get("learner", "")
            if self.learner is not None and made != self._learner_text():
                raise ArtifactError(str(self.out), f"results of the learner {self._learner_text() or 'causal forest'}",
                                    f"results of {made or 'the causal forest'}",
                                    "rerun the study with this learner (Study(folder, learner=...).run())")
        return load_result(self.out, params=self.params_path)


def _anchor_data_root(params: Mapping[str, Any]) -> dict:
    """Paths typed in Python are relative to where the code runs: a relative ``data.root`` (or none, when a
    units file is named) becomes absolute against the working directory, so the study folder's params.yaml
    (where paths are relative to the study folder) means the same files. ``data.units`` and ``data.scenes``
    stay relative to ``data.root``, as in every params.yaml."""
    params = dict(params)
    data = params.get("data")
    if isinstance(data, Mapping) and data.get("units") and not data.get("root_env"):
        root = Path(str(data.get("root") or "."))
        if not root.is_absolute():
            params["data"] = {**data, "root": str((Path.cwd() / root).resolve())}
    return params


def _plain(obj):
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = ["Config", "Study", "StudyResult", "load_result", "load_units"]
