"""``mscate``: command-line interface.

    mscate init STUDY_DIR --units FILE --scenes GLOB... --unit-id COL --location-id COL --treatment COL
                          --outcome COL [--lon COL --lat COL --cluster-id COL --covariates A,B ...]
    mscate run [STUDY_DIR]                 every stage, in order (same functions as dvc repro)
    mscate STAGE [--params P --out O]      one stage: prepare, ingest, tile, embed, features, cate, evaluate, scaling
    mscate report [STUDY_DIR] [--html F]   self-contained HTML report + Markdown summary

Bad input exits with status 2 and one line naming the input; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from pathlib import Path

from .errors import PipelineError
from .stages._common import guarded

STAGES = ("prepare", "ingest", "tile", "embed", "features", "cate", "evaluate", "scaling")

PARAMS_TEMPLATE = """\
# Study created by `mscate init`. Run with `dvc repro` in this folder (or `mscate run`).
# Every key is documented in the project README ("Params"); unknown keys are errors.
seed: 0

data:
  source: "{source}"
  root: {root}                      # folder of the units file (relative to this file, or absolute)
  root_env: ""                      # optional environment variable overriding root
  units: {units}
  scenes: {scenes}                  # rasters: files or globs, relative to root
  columns: {{unit_id: {unit_id}, location_id: {location_id}, cluster_id: {cluster_id}, W: {treatment},
            Y: {outcome}, lon: {lon}, lat: {lat}}}
  covariates: {covariates}          # pre-treatment only
  post_treatment: {post_treatment}  # columns that must never be covariates
  treated_codes: {treated_codes}    # when treatment is coded as text
  control_codes: {control_codes}
  missing_outcome: error            # or drop (counted in out/prepare/ingest.json)
  missing_covariates: error         # or impute (median + indicator)

tile:
  resampling: average               # exact area average; or nearest
  radiometry: {radiometry}          # auto (file scale/offset, Landsat C2 L2), none, l2, or a DN multiplier
  bands: []                         # band names to keep (empty = all)
  jitter_m: []                      # [min, max] metres of seeded location jitter
  jitter_seed: 0
  block_px: 1024
  workers: 1
  on_outside: error                 # or drop
  scales:                           # window size in metres, output size in pixels
{scales}

embed:
  encoders: [spectral]              # see configs/encoders/ (vit_tiny, resnet_tiny, regnet_tiny, ...)
  batch_size: 64
  device: auto                      # cuda when available
  num_workers: 0                    # DataLoader processes (0: reader threads instead)
  read_threads: 0                   # threads reading chips ahead of the encoder (0: one per core, <= 8)

features:
  encoders: [spectral]
  scale_sets: [singles, all]        # also: pairs, or explicit "a+b"
  covariates: true
  standardize: false
  pca: 0

cate:
  learner: causal_forest            # or dr_forest
  folds: 5
  n_estimators: 200                 # multiple of 4
  min_samples_leaf: 5
  max_samples: 0.45
  nuisance_trees: 100
  propensity: share                 # known assignment probability, share, or estimate
  dr_reference: all
  n_jobs: -1
  shared_nuisance: false            # true: nuisances fitted once and reused by every scale set
  linear_correction: none           # ridge: a linear CATE index before the forest; auto: per fold

evaluate:
  targets: [AUTOC, QINI]
  n_boot: 200
  q_grid: 20
  reference_set: all

compute:
  scheduler: synchronous            # or local (a Dask LocalCluster) or tcp://host:8786
  workers: 2
"""

DVC_TEMPLATE = """\
# Created by `mscate init`: the study's stages. Run `dvc repro` in this folder.
stages:
  ingest:
    cmd: python -m pipeline.stages.ingest --params params.yaml --out out
    params: [data]
    outs: [out/prepare/units.parquet, out/prepare/ingest.json]
  tile:
    cmd: python -m pipeline.stages.tile --params params.yaml --out out
    deps: [out/prepare/units.parquet]
    params: [data, tile, compute]
    outs:
      - out/tile:
          persist: true
  embed:
    cmd: python -m pipeline.stages.embed --params params.yaml --out out
    deps: [out/tile]
    params: [seed, embed, compute]
    outs: [out/embed]
  features:
    cmd: python -m pipeline.stages.features --params params.yaml --out out
    deps: [out/prepare/units.parquet, out/tile, out/embed]
    params: [features]
    outs: [out/features]
  cate:
    cmd: python -m pipeline.stages.cate --params params.yaml --out out
    deps: [out/prepare/units.parquet, out/features]
    params: [seed, cate]
    outs: [out/cate]
  evaluate:
    cmd: python -m pipeline.stages.evaluate --params params.yaml --out out
    deps: [out/cate]
    params: [seed, evaluate]
    metrics:
      - out/evaluate/metrics.json:
          cache: false
    plots:
      - out/evaluate/toc.csv:
          cache: false
          x: q
          y: estimate
    outs:
      - out/evaluate/rate_table.csv:
          cache: false
      - out/evaluate/toc.png:
          cache: false
"""


def _flow(items) -> str:
    return "[" + ", ".join(str(i) for i in items) + "]"


def cmd_init(args) -> None:
    from .config import config_from_dict
    from .sites import load_study_units

    folder = Path(args.study_dir)
    if (folder / "params.yaml").exists() and not args.force:
        raise PipelineError(str(folder / "params.yaml"), "a new study folder", "an existing params.yaml",
                            "choose another folder or pass --force to overwrite")
    units = Path(args.units).resolve()
    if not units.is_file():
        raise PipelineError(str(args.units), "an existing units file", "no such file", "check the path")
    root = units.parent
    scenes = []
    for pat in args.scenes:
        p = Path(pat)
        absolute = p if p.is_absolute() else Path.cwd() / p
        try:
            scenes.append(str(absolute.resolve().relative_to(root)))
        except ValueError:
            scenes.append(str(absolute.resolve()))
    scales = []
    for spec in args.scales.split(","):
        size, px = spec.split(":")
        scales.append(f"    - {{name: s{int(float(size))}m, size_m: {float(size)}, px: {int(px)}}}")
    text = PARAMS_TEMPLATE.format(
        source=f"units file {units.name} and its scenes", root=str(root), units=units.name,
        scenes=_flow(scenes), unit_id=args.unit_id, location_id=args.location_id,
        cluster_id=args.cluster_id or args.location_id, treatment=args.treatment, outcome=args.outcome,
        lon=args.lon, lat=args.lat, covariates=_flow(_split(args.covariates)),
        post_treatment=_flow(_split(args.post_treatment)), treated_codes=_flow(_split(args.treated_codes)),
        control_codes=_flow(_split(args.control_codes)), radiometry=args.radiometry, scales="\n".join(scales))
    import yaml

    data = yaml.safe_load(text)
    cfg = config_from_dict(data, source="params")  # validate before writing anything
    load_study_units(cfg.data, folder.resolve() if folder.exists() else Path.cwd())  # check the columns now
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(text)
    (folder / "dvc.yaml").write_text(DVC_TEMPLATE)
    (folder / "study.yaml").write_text(textwrap.dedent(f"""\
        # Study description (informational; params.yaml drives the stages).
        name: {folder.name}
        units: {units}
        scenes: {_flow(scenes)}
        created_by: mscate init
        """))
    (folder / ".gitignore").write_text("/out/\n")
    if not _inside_dvc_repo(folder.resolve()):
        from dvc.repo import Repo

        Repo.init(str(folder), no_scm=True)
        with open(folder / ".dvc" / "config", "w") as fh:
            fh.write("[core]\n    analytics = false\n    no_scm = true\n")
    print(f"mscate init: study written to {folder} (params.yaml, dvc.yaml, study.yaml); run `dvc repro` there")


def _inside_dvc_repo(path: Path) -> bool:
    return any((p / ".dvc").is_dir() for p in [path, *path.parents])


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def cmd_run(args) -> None:
    from .api import Study

    study = Study(args.study_dir)
    res = study.run()
    first = next(iter(res.metrics["sets"].values()))
    print(f"mscate run: {len(res.metrics['sets'])} scale sets evaluated; metrics in {study.out / 'evaluate'}"
          f" ({'AUTOC' if 'AUTOC' in first else ''})")


def cmd_report(args) -> None:
    from .report import write_report

    folder = Path(args.study_dir)
    out = folder / args.out
    path = write_report(out, Path(args.html) if args.html else folder / "report.html", title=args.title or folder.resolve().name)
    print(f"mscate report: {path} and {path.with_suffix('.md')}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mscate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="scaffold a study folder from a units file and scenes")
    p.add_argument("study_dir")
    p.add_argument("--units", required=True, help="units table: CSV with lon/lat, GeoPackage, GeoParquet, Stata")
    p.add_argument("--scenes", required=True, nargs="+", help="raster files or globs")
    p.add_argument("--unit-id", required=True)
    p.add_argument("--location-id", required=True)
    p.add_argument("--cluster-id", help="unit of randomization (default: the location)")
    p.add_argument("--treatment", required=True)
    p.add_argument("--outcome", required=True)
    p.add_argument("--lon", default="lon")
    p.add_argument("--lat", default="lat")
    p.add_argument("--covariates", help="comma-separated pre-treatment columns")
    p.add_argument("--post-treatment", help="comma-separated columns that must never be covariates")
    p.add_argument("--treated-codes", help="comma-separated text codes of treated units")
    p.add_argument("--control-codes", help="comma-separated text codes of control units")
    p.add_argument("--radiometry", default="auto", help="auto, none, l2 or a DN multiplier")
    p.add_argument("--scales", default="480:16,960:32,1920:32,3840:32", help="size_m:px,... (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing study")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("run", help="run every stage of a study folder")
    p.add_argument("study_dir", nargs="?", default=".")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="write the HTML report and Markdown summary of a study")
    p.add_argument("study_dir", nargs="?", default=".")
    p.add_argument("--out", default="out", help="the study's output folder (default: out)")
    p.add_argument("--html", help="report path (default: STUDY_DIR/report.html)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_report)
    for name in STAGES:
        p = sub.add_parser(name, help=f"run the {name} stage (same as python -m pipeline.stages.{name})",
                           add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, stage=name)
    if argv and argv[0] in STAGES:  # stages parse their own options (and --help)
        debug = "--debug" in argv
        module = importlib.import_module(f"pipeline.stages.{argv[0]}")
        return module.main(argv[1:] + (["--debug"] if debug and "--debug" not in argv[1:] else []))
    args = parser.parse_args(argv)
    return guarded(args.command, args.debug, args.func, args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
