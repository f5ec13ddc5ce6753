"""``mscate``: command-line interface.

    mscate init STUDY_DIR --units FILE --scenes GLOB... --unit-id COL --location-id COL --treatment COL
                          --outcome COL [--lon COL --lat COL --cluster-id COL --covariates A,B ...]
    mscate run [STUDY_DIR]                 every stage, in order (same functions as dvc repro)
    mscate STAGE [--params P --out O]      one stage: prepare, ingest, tile, embed, features, cate, evaluate,
                                           scaling, extrapolate
    mscate report [STUDY_DIR] [--html F]   self-contained HTML report + Markdown summary
    mscate --version | -v (more log lines) | -q (warnings and errors only, no progress bars)

Bad input exits with status 2 and one line naming the input; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from .core.errors import PipelineError
from .core.layout import STAGE_MODULES, StudyLayout, dvc_yaml, plot_templates, write_plot_templates
from .stages._common import guarded

log = logging.getLogger("pipeline.cli")

INIT_SECTIONS = ("seed", "data", "tile", "pretrain", "embed", "features", "cate", "evaluate", "compute")
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
    tile = {"radiometry": _number_or_text(args.radiometry), "nodata": _number_or_text(args.nodata),
            "scales": _scale_list(args.scales)}
    return {"data": data, "tile": tile, "cate": dict(INIT_CATE)}


def _number_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _in_flag_terms(exc: PipelineError, args) -> PipelineError:
    """An error about the units table, with its fix said in ``mscate init``'s flags (there is no params.yaml
    yet to edit)."""
    if "params.yaml" not in exc.fix and "data." not in exc.fix:
        return exc
    flags = [f"{flag} {getattr(args, flag[2:].replace('-', '_'))}" for flag in (*COLUMN_FLAGS, *LIST_FLAGS)
             if getattr(args, flag[2:].replace("-", "_"))]
    hint = exc.fix.split("(", 1)[1].rstrip(")") if "(" in exc.fix else ""
    fix = (f"pass the units file's own column names to init's flags (now: {'; '.join(flags)})"
           + (f"; did you mean {hint}" if hint else ""))
    return type(exc)(exc.where, exc.expected, exc.got, fix)


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
    try:  # check columns now
        trial, _ = load_study_units(cfg.data, folder.resolve() if folder.exists() else Path.cwd())
    except PipelineError as exc:
        raise _in_flag_terms(exc, args) from None
    coverage = _check_scene_coverage(cfg, trial)
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
    made_git = False
    if not _inside_dvc_repo(folder.resolve()):
        git = None if args.no_git else shutil.which("git")
        top = _git_toplevel(folder) if git else None
        if git and top is None:
            subprocess.run([git, "init", "-q", str(folder)], check=True)
            made_git = True
        _dvc_init(folder, scm=bool(git), subdir=bool(top) and Path(top).resolve() != folder.resolve())
        with open(folder / ".dvc" / "config", "w") as fh:
            fh.write("[core]\n    analytics = false\n" + ("" if git else "    no_scm = true\n"))
        write_plot_templates(folder / ".dvc")
        if not git and not args.no_git:
            log.warning("mscate init: git not found: the study has no git repository, so DVC experiments "
                        "(dvc exp run, params/metrics diff) are unavailable; install git and run `git init` there")
    else:  # a study inside an existing DVC repository: its plots need the project's templates there
        top = _dvc_root(folder.resolve())
        if not all((top / ".dvc" / "plots" / f"{name}.json").is_file() for name in plot_templates()):
            write_plot_templates(top / ".dvc")
    if made_git:
        _first_commit(folder)
    for line in (coverage, note):
        if line:
            log.info(f"mscate init: {line}")
    log.info(f"mscate init: study written to {folder} (params.yaml, dvc.yaml, study.yaml); run `dvc repro` there")


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


def _git_toplevel(folder: Path) -> str | None:
    """The root of the git repository holding ``folder`` (or its nearest existing parent), or None."""
    probe = next((p for p in [folder, *folder.parents] if p.is_dir()), Path.cwd())
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def _first_commit(folder: Path) -> None:
    """Commit the new study (params, stages, DVC config) so that DVC experiments have a baseline. Uses the
    user's git identity, or ``mscate init`` when none is configured."""
    def git(*a, **kw):
        return subprocess.run(["git", *a], cwd=folder, capture_output=True, text=True, **kw)

    git("add", "-A", check=True)
    ident = [] if git("config", "user.email").stdout.strip() else [
        "-c", "user.name=mscate init", "-c", "user.email=mscate-init@localhost"]
    res = git(*ident, "commit", "-q", "-m", "Study created by mscate init")
    if res.returncode != 0:
        log.warning(f"mscate init: the first commit failed ({res.stderr.strip()}); commit the study yourself "
                    "before `dvc exp run`")


def _check_scene_coverage(cfg, units) -> str:
    """Stop at init when no location lies in any scene (the run would stop at tiling); say how many are
    outside when some are.

    Raises:
        ImageryError: naming the scenes, the locations and the likely cause (swapped lon/lat, wrong scenes).
    """
    import numpy as np

    from .imagery.scenes import SceneCatalog, resolve_scene_paths
    from .imagery.tiling import coverage_margin, outside_error

    catalog = SceneCatalog.from_paths(resolve_scene_paths(cfg.data.scenes, base=cfg.data.root))
    locs = units.drop_duplicates("location_id")
    lon, lat = locs.geometry.x.to_numpy(), locs.geometry.y.to_numpy()
    covered = np.zeros(len(locs), dtype=bool)
    for idx in catalog.candidates(lon, lat, coverage_margin(cfg.tile.scales)):
        covered[idx] = True
    if not covered.any():
        raise outside_error(catalog, locs["location_id"].astype(str).tolist(), lon, lat, covered, every=True)
    if covered.all():
        return ""
    return (f"{int((~covered).sum())} of {len(covered)} locations lie outside every scene: the tile stage will "
            "stop unless tile.on_outside is set to drop (dropped units are counted)")


def _dvc_init(folder: Path, scm: bool = False, subdir: bool = False) -> None:
    """``dvc init`` in-process (``--no-scm`` unless ``scm``; ``--subdir`` inside a larger git repository),
    quietly (warnings only), its log lines going to today's streams.

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
        Repo.init(str(folder), no_scm=not scm, subdir=subdir)
    finally:
        for h, stream in zip(handlers, saved[0]):
            h.stream = stream
        log.setLevel(saved[1])


def _dvc_root(path: Path) -> Path | None:
    """The DVC repository holding ``path`` (the nearest folder with ``.dvc/``), or None."""
    return next((p for p in [path, *path.parents] if (p / ".dvc").is_dir()), None)


def _inside_dvc_repo(path: Path) -> bool:
    return _dvc_root(path) is not None


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def cmd_run(args) -> None:
    from .api import Study

    study = Study(args.study_dir)
    res = study.run()
    first = next(iter(res.metrics["sets"].values()))
    log.info(f"mscate run: {len(res.metrics['sets'])} scale sets evaluated; metrics in {study.out / 'evaluate'}"
          f" ({'AUTOC' if 'AUTOC' in first else ''})")


def cmd_report(args) -> None:
    from .report.document import write_report

    folder = Path(args.study_dir)
    out = folder / args.out
    path = write_report(out, Path(args.html) if args.html else StudyLayout.study_report(folder),
                        title=args.title or folder.resolve().name, params=folder / "params.yaml")
    log.info(f"mscate report: {path} and {path.with_suffix('.md')}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mscate")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


class _StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is when a record is emitted (not the stream of the
    moment it was made, which a notebook or a test runner may have replaced and closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbosity: int) -> None:
    """Log levels of the ``mscate`` command: ``-q`` warnings and errors only (and no progress bars), default
    information, ``-v`` debug lines. Data warnings reach the log as ``warning [stage] ...`` lines."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(max(-1, min(verbosity, 1)), logging.DEBUG)
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pipeline").setLevel(level)
    for noisy in ("distributed", "numba", "matplotlib", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if verbosity < 0:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it when a bar is created


def main(argv=None) -> int:
    from .core.config import ColumnsConfig, DataConfig, TileConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mscate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mscate {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="scaffold a study folder from a units file and scenes",
                       description="Write a study folder (params.yaml, dvc.yaml, study.yaml) for a units file "
                                   "and its scenes; the units table is checked now.")
    p.add_argument("study_dir", help="the new study's folder (created)")
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
    p.add_argument("--nodata", default=_default(TileConfig, "nodata"),
                   help=f"tile.nodata: {_doc(TileConfig, 'nodata')} (default %(default)s)")
    p.add_argument("--scales", default="480:16,960:32,1920:32,3840:32", help="size_m:px,... (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing study")
    p.add_argument("--no-git", action="store_true",
                   help="no git repository (DVC without SCM: no `dvc exp run`, params or metrics diff)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("run", help="run every stage of a study folder",
                       description="Run every stage of a study (its params.yaml, outputs in its out/), in order: "
                                   "the same library functions as `dvc repro` in that folder.")
    p.add_argument("study_dir", nargs="?", default=".",
                   help="the study folder holding params.yaml (default: the current folder)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="write the HTML report and Markdown summary of a study",
                       description="Write a self-contained HTML report and a Markdown summary of a study that "
                                   "has run; results made with other params than its params.yaml are refused.")
    p.add_argument("study_dir", nargs="?", default=".",
                   help="the study folder holding params.yaml and out/ (default: the current folder)")
    p.add_argument("--out", default="out", help="the study's output folder (default: out)")
    p.add_argument("--html", help="report path (default: STUDY_DIR/report.html)")
    p.add_argument("--title", help="report title (default: the study folder's name)")
    p.set_defaults(func=cmd_report)
    for name in STAGE_MODULES:
        p = sub.add_parser(name, help=f"run the {name} stage (same as python -m pipeline.stages.{name})",
                           add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, stage=name)
    lead = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if lead < len(argv) and argv[lead] in STAGE_MODULES:  # stages parse their own options (and --help)
        glob = parser.parse_args(argv[:lead] + ["run"])  # the global flags before the stage's name
        setup_logging(glob.verbose - glob.quiet)
        rest = argv[lead + 1:]
        module = importlib.import_module(f"pipeline.stages.{argv[lead]}")
        return module.main(rest + (["--debug"] if glob.debug and "--debug" not in rest else []))
    args = parser.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    return guarded(args.command, args.debug, args.func, args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
