"""Where a study's artifacts live: the one owner of every output path, the stage graph and ``load_result``.

A study's outputs sit under one folder (``out/``). Each stage writes one sub-folder, whose file names are
defined here and nowhere else; the stage graph below (which stage reads which params sections and
artifacts, and writes which) is the single source from which ``dvc.yaml`` files, the CLI's stage commands
and :class:`pipeline.api.Study` are derived.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import require


@dataclass(frozen=True)
class ChipStorePaths:
    """A chip store (the tile stage's folder): ``chips.zarr/<scale>``, the manifest (written last: its
    presence marks a complete store), the location order of the store's rows and the scene footprints."""

    root: Path

    @property
    def chips(self) -> Path:
        return self.root / "chips.zarr"

    @property
    def partial(self) -> Path:
        """The store being written chunk by chunk (renamed onto :attr:`chips` when complete)."""
        return self.root / ".partial-chips.zarr"

    @staticmethod
    def chunk_marker(partial: Path, start: int) -> Path:
        """The manifest rows of the chunk starting at store row ``start`` of a partial store (written last
        by the chunk: its completion marker)."""
        return Path(partial) / "done" / f"{start:012d}.parquet"

    @staticmethod
    def plan_digest(partial: Path) -> Path:
        """The digest of the inputs and settings a partial store was started with (a rerun resumes only
        when they are unchanged)."""
        return Path(partial) / "plan.sha256"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def locations(self) -> Path:
        return self.root / "locations.parquet"

    @property
    def scenes(self) -> Path:
        return self.root / "scenes.parquet"

    @property
    def report(self) -> Path:
        """What the tiling found: counts and the warnings it printed (read by the study report)."""
        return self.root / "tiling.json"


@dataclass(frozen=True)
class PretrainPaths:
    """Self-supervised checkpoints learned from the study's own imagery: per encoder preset the weights
    (safetensors), a card (config, data digest, steps, losses) and the loss curve; plus an index."""

    root: Path

    def weights(self, encoder: str) -> Path:
        return self.root / f"{encoder}.safetensors"

    def card(self, encoder: str) -> Path:
        return self.root / f"{encoder}.json"

    def loss_png(self, encoder: str) -> Path:
        return self.root / f"{encoder}_loss.png"

    @property
    def index(self) -> Path:
        return self.root / "index.json"


@dataclass(frozen=True)
class EmbeddingPaths:
    """Embeddings of a chip store: per encoder and scale a (locations x dim) array, plus the encoder's
    column names and card."""

    root: Path

    def array(self, encoder: str, scale: str) -> Path:
        return self.root / encoder / f"{scale}.npy"

    def feature_names(self, encoder: str) -> Path:
        return self.root / encoder / "feature_names.json"

    def card(self, encoder: str) -> Path:
        return self.root / encoder / "card.json"

    def fitted_state(self, encoder: str) -> Path:
        """The state of an encoder fitted on the chips (random features' kernels), to embed new chips alike."""
        return self.root / encoder / "fitted.safetensors"


@dataclass(frozen=True)
class FeaturePaths:
    """Multi-scale Concatenation: one (units x features) matrix per scale set, and the index."""

    root: Path

    def matrix(self, scale_set: str) -> Path:
        return self.root / f"{scale_set}.npy"

    @property
    def index(self) -> Path:
        return self.root / "index.json"


@dataclass(frozen=True)
class CatePaths:
    """The cate stage's outputs."""

    root: Path

    @property
    def table(self) -> Path:
        return self.root / "cate.parquet"

    @property
    def dr(self) -> Path:
        return self.root / "dr.parquet"

    @property
    def sets(self) -> Path:
        return self.root / "sets.json"

    @property
    def importance(self) -> Path:
        return self.root / "importance.json"

    @property
    def corrections(self) -> Path:
        return self.root / "corrections.json"

    @property
    def warnings(self) -> Path:
        """What the cate stage found that a reader must know (read by the study report)."""
        return self.root / "warnings.json"


@dataclass(frozen=True)
class EvaluatePaths:
    """The evaluate stage's outputs."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def rate_table(self) -> Path:
        return self.root / "rate_table.csv"

    @property
    def toc(self) -> Path:
        return self.root / "toc.csv"

    @property
    def toc_png(self) -> Path:
        return self.root / "toc.png"

    @property
    def run_record(self) -> Path:
        """The params (per section, as digests) of the last complete run through the library API; written
        after every stage succeeded, removed whenever the evaluate stage runs on its own."""
        return self.root / "run.json"


@dataclass(frozen=True)
class ScalingPaths:
    """The scaling-strategy study's outputs."""

    root: Path

    @property
    def table(self) -> Path:
        return self.root / "table.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def figure(self, kind: str) -> Path:
        """``kind``: ``acts`` or ``time`` (against FLOPs)."""
        return self.root / f"{kind}_vs_flops.png"


@dataclass(frozen=True)
class QualityPaths(ScalingPaths):
    """The scaling study's quality part: probe error of every scaled, pretrained encoder (the same table and
    metrics files as :class:`ScalingPaths`, other figures)."""

    def figure(self, against: str) -> Path:
        """``against``: ``flops`` or ``time`` (probe error against pretraining FLOPs or wall time)."""
        return self.root / f"error_vs_{against}.png"


@dataclass(frozen=True)
class ExtrapolationPaths:
    """CATE predictions at locations without units, and the intermediate chip store and embeddings."""

    root: Path

    @property
    def table(self) -> Path:
        return self.root / "extrapolation.parquet"

    @property
    def map_png(self) -> Path:
        return self.root / "cate_map.png"

    @property
    def tile(self) -> ChipStorePaths:
        return ChipStorePaths(self.root / "tile")

    @property
    def embed(self) -> EmbeddingPaths:
        return EmbeddingPaths(self.root / "embed")


@dataclass(frozen=True)
class StudyLayout:
    """Every artifact of a study, under its output folder ``out``.

    Example::

        layout = StudyLayout("out")
        layout.units                 # out/prepare/units.parquet
        layout.embed.array("spectral", "s240m")
    """

    out: Path

    def __init__(self, out: str | os.PathLike):
        object.__setattr__(self, "out", Path(out))

    # prepare / ingest
    @property
    def prepare_dir(self) -> Path:
        return self.out / "prepare"

    @property
    def units(self) -> Path:
        return self.prepare_dir / "units.parquet"

    @property
    def ingest_report(self) -> Path:
        return self.prepare_dir / "ingest.json"

    @property
    def simulated_scenes(self) -> Path:
        """The simulation's scene folder (real studies name their scenes in ``data.scenes``)."""
        return self.prepare_dir / "scenes"

    def simulated_scene(self, i: int) -> Path:
        return self.simulated_scenes / f"scene_{i:03d}.tif"

    @property
    def simulated_scene_index(self) -> Path:
        return self.prepare_dir / "scenes.parquet"

    @property
    def truth(self) -> Path:
        """The true CATE of a simulation (read only by evaluation)."""
        return self.out / "truth.parquet"

    # later stages
    @property
    def tile(self) -> ChipStorePaths:
        return ChipStorePaths(self.out / "tile")

    @property
    def pretrain(self) -> PretrainPaths:
        return PretrainPaths(self.out / "pretrain")

    @property
    def pretrain_timing(self) -> Path:
        """Wall time and images/s of each pretraining run (a DVC metric kept apart from the checkpoints, so
        that a rerun with the same seed leaves the embed stage's inputs byte-identical)."""
        return self.out / "pretrain_timing.json"

    @property
    def embed(self) -> EmbeddingPaths:
        return EmbeddingPaths(self.out / "embed")

    @property
    def features(self) -> FeaturePaths:
        return FeaturePaths(self.out / "features")

    @property
    def cate(self) -> CatePaths:
        return CatePaths(self.out / "cate")

    @property
    def evaluate(self) -> EvaluatePaths:
        return EvaluatePaths(self.out / "evaluate")

    @property
    def scaling(self) -> ScalingPaths:
        return ScalingPaths(self.out / "scaling")

    @property
    def quality(self) -> QualityPaths:
        return QualityPaths(self.out / "quality")

    @property
    def extrapolate(self) -> ExtrapolationPaths:
        return ExtrapolationPaths(self.out / "extrapolate")

    @property
    def nonexperimental(self) -> Path:
        """Inputs of an extrapolation prepared by a study's own script (Uganda: the non-experimental windows)."""
        return self.out / "nonexp"

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    @staticmethod
    def study_report(folder: str | os.PathLike) -> Path:
        """``mscate report``'s default report path: beside the study's params file."""
        return Path(folder) / "report.html"

    def relative(self, path: Path) -> str:
        """``path`` relative to the study folder (the parent of ``out``), as dvc.yaml spells it."""
        return Path(path).relative_to(self.out.parent).as_posix()


# ----------------------------------------------------------------------------------------------------------
# The stage graph


@dataclass(frozen=True)
class StageSpec:
    """One stage: the params sections it reads, the library code and artifacts it depends on, its outputs.

    ``code`` lists repository files (relative to the repository root) whose change reruns the stage in the
    project's own studies; a study made by ``mscate init`` depends on the installed package instead.
    ``deps(layout, kind)`` and ``outs(layout)`` (path and DVC options) are functions of the layout, so that
    no path is spelled twice. ``real_params`` are the extra sections a real study's stage reads.
    """

    name: str
    doc: str
    params: tuple[str, ...]
    code: tuple[str, ...]
    deps: Callable[[StudyLayout, str], list[Path]]
    outs: Callable[[StudyLayout], list[tuple[Path, dict]]]
    kinds: tuple[str, ...] = ("simulation", "real")
    real_params: tuple[str, ...] = ()
    metrics: Callable[[StudyLayout], list[Path]] = lambda L: []
    plots: Callable[[StudyLayout], list[tuple[Path, dict]]] = lambda L: []


TOC_TEMPLATE = "toc_by_set"
"""The DVC plot template of the TOC table (``.dvc/plots/toc_by_set.json``): one line per scale set, dashes by
revision (DVC's ``linear`` template colours by revision only, which merges the sets into one series)."""


def plot_templates() -> dict[str, dict]:
    """The project's DVC plot templates (Vega-Lite, with DVC's anchors), by name."""
    return {TOC_TEMPLATE: {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "width": 400, "height": 300,
        "mark": {"type": "line", "point": True, "tooltip": {"content": "data"}},
        "encoding": {
            "x": {"field": "<DVC_METRIC_X>", "type": "quantitative", "title": "treated fraction q"},
            "y": {"field": "<DVC_METRIC_Y>", "type": "quantitative", "title": "TOC estimate"},
            "color": {"field": "set", "type": "nominal", "title": "scale set"},
            "strokeDash": {"field": "rev", "type": "nominal", "title": "revision"},
        },
    }}


def write_plot_templates(dvc_dir: str | os.PathLike) -> list[Path]:
    """Write :func:`plot_templates` into a DVC repository's ``.dvc/plots/``; return the files."""
    folder = Path(dvc_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in plot_templates().items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(spec, indent=2) + "\n")
        paths.append(path)
    return paths


def _no_cache(**extra) -> dict:
    return {"cache": False, **extra}


STAGES: tuple[StageSpec, ...] = (
    StageSpec("prepare", "simulate the default study's scene and units, and (separately) the true CATE",
              ("seed", "simulate"), ("pipeline/procedures/simulate.py", "pipeline/procedures/prepare.py"),
              lambda L, k: [],
              lambda L: [(L.units, {}), (L.simulated_scenes, {}), (L.simulated_scene_index, {}), (L.truth, {})],
              kinds=("simulation",)),
    StageSpec("ingest", "read a real study's units file (params `data`), validate it, write units.parquet",
              ("data", "seed", "cate.folds"), ("pipeline/core/units.py", "pipeline/procedures/prepare.py"),
              lambda L, k: [],
              lambda L: [(L.units, {}), (L.ingest_report, _no_cache())], kinds=("real",)),
    StageSpec("tile", "cut multi-scale chips (windows in metres) around every location",
              ("tile", "compute"), ("pipeline/procedures/tile.py", "pipeline/imagery/tiling.py",
                                    "pipeline/imagery/scenes.py", "pipeline/imagery/_area_kernel.py"),
              lambda L, k: [L.units] + ([L.simulated_scenes] if k == "simulation" else []),
              # persist: an interrupted tiling resumes its finished chunks
              lambda L: [(L.tile.root, {"persist": True})], real_params=("data",)),
    StageSpec("pretrain", "self-supervised pretraining of encoders on chips at random positions of the scenes",
              ("seed", "tile", "pretrain", "compute"),
              ("pipeline/procedures/pretrain.py", "models", "configs/encoders"),
              lambda L, k: [L.simulated_scenes] if k == "simulation" else [],
              lambda L: [(L.pretrain.root, {})], real_params=("data",), metrics=lambda L: [L.pretrain_timing]),
    StageSpec("embed", "encode every scale's chips with every configured encoder",
              ("seed", "embed", "compute"), ("pipeline/procedures/embed.py", "pipeline/imagery/embedding.py",
                                             "models", "configs/encoders"),
              lambda L, k: [L.tile.root, L.pretrain.root], lambda L: [(L.embed.root, {})]),
    StageSpec("features", "Multi-scale Concatenation of per-scale embeddings (plus covariates) per scale set",
              ("features",), ("pipeline/procedures/features.py", "pipeline/estimate/concat.py"),
              lambda L, k: [L.units, L.tile.root, L.embed.root], lambda L: [(L.features.root, {})]),
    StageSpec("cate", "cross-fitted causal forests per scale set, out-of-fold CATEs and DR scores",
              ("seed", "cate", "compute"), ("pipeline/procedures/cate.py", "pipeline/estimate/cate.py",
                                            "pipeline/estimate/forest.py", "pipeline/estimate/_forest_kernel.py"),
              lambda L, k: [L.units, L.features.root], lambda L: [(L.cate.root, {})]),
    StageSpec("evaluate", "RATE (AUTOC, QINI), RATE Ratio, paired tests, TOC table and figure, metrics.json",
              ("seed", "evaluate"), ("pipeline/procedures/evaluate.py", "pipeline/estimate/inference.py",
                                     "pipeline/estimate/rate.py", "pipeline/estimate/_rate_kernel.py",
                                     "pipeline/report/figures.py"),
              lambda L, k: [L.units, L.cate.root] + ([L.truth] if k == "simulation" else []),
              lambda L: [(L.evaluate.rate_table, _no_cache())],
              metrics=lambda L: [L.evaluate.metrics],
              plots=lambda L: [(L.evaluate.toc, {"x": "q", "y": "estimate", "template": TOC_TEMPLATE}),
                               (L.evaluate.toc_png, {})]),
)
"""The CATE study's stages, in order (``kinds``: simulation, real study, or both)."""

SCALING_STAGE = StageSpec(
    "scaling", "grow encoders by every scaling strategy; count FLOPs/params/activations, time them",
    ("scaling",), ("pipeline/procedures/scaling.py", "pipeline/report/figures.py", "models", "configs/encoders"),
    lambda L, k: [], lambda L: [(L.scaling.table, _no_cache())],
    kinds=("scaling",), metrics=lambda L: [L.scaling.metrics],
    plots=lambda L: [(L.scaling.figure("acts"), {}), (L.scaling.figure("time"), {})])

QUALITY_STAGE = StageSpec(
    "quality", "pretrain every scaled encoder with equal images seen; linear-probe error against FLOPs and time",
    ("seed", "quality"), ("pipeline/procedures/quality.py", "pipeline/procedures/simulate.py",
                          "pipeline/imagery/embedding.py", "pipeline/report/figures.py", "models", "configs/encoders"),
    lambda L, k: [], lambda L: [(L.quality.table, _no_cache())],
    kinds=("scaling",), metrics=lambda L: [L.quality.metrics],
    plots=lambda L: [(L.quality.figure("flops"), {}), (L.quality.figure("time"), {})])

EXTRAPOLATE_STAGE = StageSpec(
    "extrapolate", "CATE at locations without units, from the scales available there (labelled)",
    ("seed", "tile", "embed", "features", "cate", "extrapolate"), ("pipeline/procedures/extrapolate.py",),
    lambda L, k: [L.nonexperimental, L.units, L.tile.root, L.embed.root, L.cate.root],
    lambda L: [(L.extrapolate.table, {}), (L.extrapolate.map_png, _no_cache())], kinds=())

STAGE_MODULES = tuple(s.name for s in STAGES) + (SCALING_STAGE.name, QUALITY_STAGE.name, EXTRAPOLATE_STAGE.name)
"""Every stage that has an entry point ``python -m pipeline.stages.<name>``."""


def study_stages(kind: str) -> tuple[StageSpec, ...]:
    """The stages of a study of ``kind`` (``simulation``, ``real`` or ``scaling``), in order."""
    return tuple(s for s in (*STAGES, SCALING_STAGE, QUALITY_STAGE) if kind in s.kinds)


def stage_command(name: str, extra: str = "") -> str:
    """The command line of a stage, run in the study folder."""
    return f"python -m pipeline.stages.{name} --params params.yaml --out out{extra}"


def dvc_stage(spec: StageSpec, kind: str, code_root: str | None, cmd: str | None = None) -> dict:
    """One ``dvc.yaml`` stage entry. ``code_root``: the repository root relative to the study folder
    (e.g. ``../..``), or None for a study made by ``mscate init`` (the package is installed, not tracked)."""
    L = StudyLayout("out")

    def rel(p: Path) -> str:
        return L.relative(p)

    def opt(path: Path, options: dict):
        return {rel(path): dict(options)} if options else rel(path)

    code = [f"{code_root}/{c}" if code_root not in (None, ".") else c for c in spec.code] if code_root else []
    entry: dict = {"cmd": cmd or stage_command(spec.name)}
    deps = code + [rel(p) for p in spec.deps(L, kind)]
    if deps:
        entry["deps"] = deps
    entry["params"] = list(spec.params) + (list(spec.real_params) if kind == "real" else [])
    if spec.metrics(L):
        entry["metrics"] = [{rel(p): {"cache": False}} for p in spec.metrics(L)]
    if spec.plots(L):
        entry["plots"] = [{rel(p): {"cache": False, **o}} for p, o in spec.plots(L)]
    entry["outs"] = [opt(p, o) for p, o in spec.outs(L)]
    return entry


def report_stage(title: str, code_root: str | None, inputs: str = "study") -> dict:
    """The ``dvc.yaml`` entry that writes the HTML report and Markdown summary."""
    L = StudyLayout("out")
    code = [f"{code_root}/pipeline/report/document.py", f"{code_root}/pipeline/report/figures.py"] if code_root \
        else []
    reads = [L.evaluate.metrics, L.cate.root] if inputs == "study" else [L.scaling.metrics, L.quality.metrics]
    html = L.relative(L.report_html)
    return {"cmd": f'python -m pipeline.cli report . --html {html} --title "{title}"',
            "deps": code + [L.relative(p) for p in reads],
            "outs": [{html: {"cache": False}}, {L.relative(L.report_html.with_suffix(".md")): {"cache": False}}]}


def dvc_yaml(kind: str, *, code_root: str | None, report_title: str | None = None,
             extra: dict | None = None, header: str = "") -> str:
    """The text of a study's ``dvc.yaml``: its stages from :data:`STAGES` (or the scaling stage), an optional
    report stage and ``extra`` study-specific stages (name -> entry), in that order."""
    import yaml

    stages = {s.name: dvc_stage(s, kind, code_root) for s in study_stages(kind)}
    for name, entry in (extra or {}).items():
        stages[name] = entry
    if report_title:
        stages["report"] = report_stage(report_title, code_root, "scaling" if kind == "scaling" else "study")
    class _Indented(yaml.SafeDumper):  # lists indented under their key, as people write dvc.yaml
        def increase_indent(self, flow=False, indentless=False):
            return super().increase_indent(flow, False)

    body = yaml.dump({"stages": stages}, Dumper=_Indented, sort_keys=False, width=200)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


# ----------------------------------------------------------------------------------------------------------
# Loading a finished study


@dataclass
class StudyResult:
    """What a study produced: metrics, the RATE table, TOC curves and per-unit CATEs."""

    out: Path
    metrics: dict
    rate_table: object  # pandas.DataFrame
    toc: object  # pandas.DataFrame
    cate: object  # geopandas.GeoDataFrame


RESULT_SECTIONS = ("seed", "data", "simulate", "tile", "pretrain", "embed", "features", "cate", "evaluate")
"""The params sections a study's result depends on (``compute`` changes where, not what, is computed)."""


def params_digests(cfg) -> dict[str, str]:
    """SHA-256 of each :data:`RESULT_SECTIONS` section of a validated config (canonical JSON)."""
    import dataclasses
    import hashlib

    def digest(value) -> str:
        plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        text = json.dumps(plain, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    return {name: digest(getattr(cfg, name)) for name in RESULT_SECTIONS}


def _dotted(tree, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def stale_sections(out: str | os.PathLike, params_path: str | os.PathLike) -> tuple[list[str], str]:
    """What the results in ``out`` were not made with, compared with the current ``params_path``.

    The API's run record (:attr:`EvaluatePaths.run_record`) is compared section by section; a study run by
    ``dvc repro`` is compared through its ``dvc.lock`` (the params each stage last ran with), beside the
    params file. Returns the changed sections or keys (empty when current or when neither record exists)
    and the command that brings the results up to date.
    """
    import yaml

    from .config import load_config

    layout, params_path = StudyLayout(out), Path(params_path)
    if not params_path.is_file():
        return [], ""
    if layout.evaluate.run_record.is_file():
        made = json.loads(layout.evaluate.run_record.read_text()).get("params", {})
        now = params_digests(load_config(params_path))
        return [k for k in RESULT_SECTIONS if made.get(k) != now[k]], "Study(folder).run() or mscate run"
    lock = params_path.parent / "dvc.lock"
    if not lock.is_file():
        return [], ""
    current = yaml.safe_load(params_path.read_text()) or {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    changed = []
    for stage, entry in stages.items():
        for key, value in ((entry or {}).get("params", {}).get(params_path.name, {}) or {}).items():
            if _dotted(current, key) != value:
                changed.append(f"{key} (read by {stage})")
    return changed, "dvc repro"


def check_current(out: str | os.PathLike, params_path: str | os.PathLike) -> None:
    """Refuse results that another ``params.yaml`` made (a changed or failed run is never reported as the
    old one).

    Raises:
        ArtifactError: naming the changed sections and the command that reruns the study.
    """
    from .errors import ArtifactError

    changed, rerun = stale_sections(out, params_path)
    if changed:
        raise ArtifactError(str(Path(out)), f"results made with the current {Path(params_path).name}",
                            f"results made before {', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''} "
                            "changed (or a run since then failed)", f"rerun the study ({rerun})")


def load_result(out: str | os.PathLike, cls: type = StudyResult, params: str | os.PathLike | None = None):
    """A :class:`StudyResult` (or the subclass ``cls``) from a study's output folder, whether it ran
    through the API, the CLI or ``dvc repro``. With ``params`` (the study's ``params.yaml``), results made
    with other params are refused (:func:`check_current`).

    Raises:
        ArtifactError: when the study has not been evaluated yet, or was evaluated with other params.
    """
    import geopandas as gpd
    import pandas as pd

    layout = StudyLayout(out)
    if params is not None:
        check_current(out, params)
    ev = layout.evaluate
    metrics = json.loads(require(ev.metrics, "the evaluate stage's metrics.json").read_text())
    rate_table = pd.read_csv(ev.rate_table)
    toc = pd.read_csv(ev.toc)
    units = gpd.read_parquet(require(layout.units, "the prepared units"))
    cate = pd.read_parquet(require(layout.cate.table, "the cate stage's cate.parquet"))
    merged = units[["unit_id", "location_id", "cluster_id", "W", "Y", "geometry"]].merge(
        cate[["set", "unit_id", "fold", "tau_hat", "lower", "upper"]], on="unit_id")
    return cls(out=layout.out, metrics=metrics, rate_table=rate_table, toc=toc,
                       cate=gpd.GeoDataFrame(merged, geometry="geometry", crs=units.crs))
