"""``mscate``: command-line interface.

    mscate init STUDY_DIR --units FILE --scenes GLOB... --unit-id COL --location-id COL --treatment COL
                          --outcome COL [--lon COL --lat COL --cluster-id COL --covariates A,B ...]
    mscate run [STUDY_DIR]                 every stage, in order (same functions as dvc repro)
    mscate STAGE [--params P --out O]      one stage: prepare, ingest, tile, embed, features, cate, evaluate,
                                           scaling, extrapolate
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

from .core.errors import PipelineError
from .core.layout import STAGE_MODULES, StudyLayout, dvc_yaml
from .stages._common import guarded

INIT_SECTIONS = ("seed", "data", "tile", "embed", "features", "cate", "evaluate", "compute")
"""The params sections of a study made by ``mscate init`` (a real study: no simulation, no scaling)."""

INIT_CATE = {"propensity": "share"}
"""init's one departure from the schema's defaults: the tool cannot know a new trial's design probability,
so the DR scores use the out-of-fold treated share (set the known probability in params.yaml when there is
one)."""

# init's column flags: flag -> (data.columns key, required); help and defaults come from the schema
COLUMN_FLAGS = {"--unit-id": ("unit_id", True), "--location-id": ("location_id", True),
                "--cluster-id": ("cluster_id", False), "--treatment": ("W", True), "--outcome": ("Y", True),
                "--lon": ("lon", False), "--lat": ("lat", False)}
# init's list flags (comma-separated) -> data key
LIST_FLAGS = {"--covariates": "covariates", "--post-treatment": "post_treatment",
              "--treated-codes": "treated_codes", "--control-codes": "control_codes"}


def _doc(cls, name: str) -> str:
    import dataclasses

    return next(f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name == name)


def _default(cls, name: str):
    import dataclasses

    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _scale_list(spec: str) -> list[dict]:
    scales = []
    for item in spec.split(","):
        try:
            size, px = item.split(":")
            scales.append({"name": f"s{int(float(size))}m", "size_m": float(size), "px": int(px)})
        except ValueError:
            raise PipelineError("--scales", "size_m:px pairs separated by commas (e.g. 480:16,1920:32)",
                                repr(item), "write each scale as metres:pixels") from None
    return scales


def init_params(args) -> dict:
    """The params mapping of a new study from ``mscate init``'s arguments (everything else: the schema's
    defaults)."""
    units = Path(args.units).resolve()
    root = units.parent
    scenes = []
    for pat in args.scenes:
        p = Path(pat)
        absolute = p if p.is_absolute() else Path.cwd() / p
        try:
            scenes.append(str(absolute.resolve().relative_to(root)))
        except ValueError:
            scenes.append(str(absolute.resolve()))
    columns = {key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _) in COLUMN_FLAGS.items()}
    columns["cluster_id"] = columns["cluster_id"] or columns["location_id"]
    data = {"source": f"units file {units.name} and its scenes", "root": str(root), "units": units.name,
            "scenes": scenes, "columns": columns,
            **{key: _split(getattr(args, flag[2:].replace("-", "_"))) for flag, key in LIST_FLAGS.items()}}
    radiometry = args.radiometry
    try:
        radiometry = float(radiometry)
    except ValueError:
        pass
    return {"data": data, "tile": {"radiometry": radiometry, "scales": _scale_list(args.scales)},
            "cate": dict(INIT_CATE)}


def cmd_init(args) -> None:
    from .core.config import render_params
    from .core.units import load_study_units

    folder = Path(args.study_dir)
    if (folder / "params.yaml").exists() and not args.force:
        raise PipelineError(str(folder / "params.yaml"), "a new study folder", "an existing params.yaml",
                            "choose another folder or pass --force to overwrite")
    units = Path(args.units).resolve()
    if not units.is_file():
        raise PipelineError(str(args.units), "an existing units file", "no such file", "check the path")
    params = init_params(args)
    from .core.config import config_from_dict

    cfg = config_from_dict(params, source="params")
    trial, _ = load_study_units(cfg.data, folder.resolve() if folder.exists() else Path.cwd())  # check columns now
    note = _fit_folds_to_trial(params, cfg, trial)
    text = render_params(params, INIT_SECTIONS, header=(
        "Study created by `mscate init`. Run with `dvc repro` in this folder (or `mscate run`).\n"
        "Every key is documented in the project README (\"Params\"); unknown keys are errors."
        + (f"\n{note}" if note else "")))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(text)
    (folder / "dvc.yaml").write_text(dvc_yaml("real", code_root=None, header=(
        "Created by `mscate init`: the study's stages. Run `dvc repro` in this folder.")))
    (folder / "study.yaml").write_text(textwrap.dedent(f"""\
        # Study description (informational; params.yaml drives the stages).
        name: {folder.name}
        units: {units}
        scenes: [{", ".join(params["data"]["scenes"])}]
        created_by: mscate init
        """))
    (folder / ".gitignore").write_text(f"/{StudyLayout('out').out.name}/\n")
    if not _inside_dvc_repo(folder.resolve()):
        _dvc_init(folder)
        with open(folder / ".dvc" / "config", "w") as fh:
            fh.write("[core]\n    analytics = false\n    no_scm = true\n")
    if note:
        print(f"mscate init: {note}")
    print(f"mscate init: study written to {folder} (params.yaml, dvc.yaml, study.yaml); run `dvc repro` there")


def _fit_folds_to_trial(params: dict, cfg, units) -> str:
    """Lower ``cate.folds`` to the largest number of cross-fitting folds the trial supports (a small cluster
    trial cannot fill five folds); return a note saying so, or "" when the default fits.

    Raises:
        EstimationError: when not even two folds fit (says the smallest trial that would).
    """
    from .estimate.cate import check_trial_design, cluster_arms, design_problem

    W, clusters = units["W"].to_numpy(), units["cluster_id"].astype(str).to_numpy()
    k = cfg.cate.folds
    fits = [j for j in range(k, 1, -1) if design_problem(W, clusters, j, cfg.seed) is None]
    if not fits:
        check_trial_design(W, clusters, 2, cfg.seed)  # raises, naming the minimum
    if fits[0] == k:
        return ""
    _, arm = cluster_arms(W, clusters)
    params.setdefault("cate", {})["folds"] = fits[0]
    return (f"cate.folds set to {fits[0]} (not {k}): the trial has {len(arm)} clusters ({int(arm.sum())} treated, "
            f"{int((1 - arm).sum())} control), too few for {k} cross-fitting folds")


def _dvc_init(folder: Path) -> None:
    """``dvc init --no-scm`` in-process, quietly (warnings only), its log lines going to today's streams.

    Importing ``dvc`` attaches stream handlers to the ``sys.stdout``/``sys.stderr`` of that moment; in a
    long-lived process (a notebook, a test runner) those streams may since have been replaced and closed, and
    DVC raises when it logs to one. For the call the handlers point at the current streams; afterwards they
    are restored.
    """
    import logging

    from dvc.repo import Repo

    log = logging.getLogger("dvc")
    handlers = [h for h in log.handlers if isinstance(h, logging.StreamHandler)]
    saved = [h.stream for h in handlers], log.level
    try:
        for h in handlers:
            h.stream = sys.stderr if h.level >= logging.WARNING else sys.stdout
        log.setLevel(logging.WARNING)
        Repo.init(str(folder), no_scm=True)
    finally:
        for h, stream in zip(handlers, saved[0]):
            h.stream = stream
        log.setLevel(saved[1])


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
    from .report.document import write_report

    folder = Path(args.study_dir)
    out = folder / args.out
    path = write_report(out, Path(args.html) if args.html else StudyLayout.study_report(folder),
                        title=args.title or folder.resolve().name, params=folder / "params.yaml")
    print(f"mscate report: {path} and {path.with_suffix('.md')}")


def main(argv=None) -> int:
    from .core.config import ColumnsConfig, DataConfig, TileConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mscate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="scaffold a study folder from a units file and scenes")
    p.add_argument("study_dir")
    p.add_argument("--units", required=True, help="units table: CSV with lon/lat, GeoPackage, GeoParquet or Stata")
    p.add_argument("--scenes", required=True, nargs="+", help="raster files or globs")
    for flag, (key, required) in COLUMN_FLAGS.items():
        default = None if required or key == "cluster_id" else _default(ColumnsConfig, key)
        extra = " (default: the location)" if key == "cluster_id" else (f" (default: {default})" if default else "")
        p.add_argument(flag, required=required, default=default,
                       help=f"column: {_doc(ColumnsConfig, key)}{extra}")
    for flag, key in LIST_FLAGS.items():
        kind = "values" if key.endswith("codes") else "columns"
        p.add_argument(flag, help=f"comma-separated {kind}: {_doc(DataConfig, key)}")
    p.add_argument("--radiometry", default=_default(TileConfig, "radiometry"), help=_doc(TileConfig, "radiometry"))
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
    for name in STAGE_MODULES:
        p = sub.add_parser(name, help=f"run the {name} stage (same as python -m pipeline.stages.{name})",
                           add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, stage=name)
    if argv and argv[0] in STAGE_MODULES:  # stages parse their own options (and --help)
        debug = "--debug" in argv
        module = importlib.import_module(f"pipeline.stages.{argv[0]}")
        return module.main(argv[1:] + (["--debug"] if debug and "--debug" not in argv[1:] else []))
    args = parser.parse_args(argv)
    return guarded(args.command, args.debug, args.func, args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
