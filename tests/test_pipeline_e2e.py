"""All stages on a tiny simulated study; reruns are identical; bad input stops with a named error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml

from pipeline.stages import cate, embed, evaluate, features, prepare, pretrain, tile

STAGES = [prepare, tile, pretrain, embed, features, cate, evaluate]


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".png") and p.name != "pretrain_timing.json"}


def run_all(params: Path, out: Path) -> None:
    for stage in STAGES:
        assert stage.main(["--params", str(params), "--out", str(out)]) == 0, stage.__name__


@pytest.fixture
def tiny_study(tmp_path, tiny_params):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    out = tmp_path / "out"
    run_all(params, out)
    return params, out


def test_all_stages_run_and_write_metrics(tiny_study, tiny_params):
    params, out = tiny_study
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"s240m", "s1920m", "all"}
    for entry in metrics["sets"].values():
        for target in ("AUTOC", "QINI"):
            assert {"estimate", "std_err", "ratio", "ci_low", "ci_high"} <= set(entry[target])
            assert entry[target]["std_err"] > 0
        assert -1 <= entry["corr_true_tau"] <= 1
    assert metrics["paired"]["reference"] == "all"
    assert (out / "evaluate" / "toc.png").stat().st_size > 5000
    assert (out / "evaluate" / "toc.csv").read_text().startswith("set,q,estimate,std_err")
    # truth never reaches the units file or the features
    units = gpd.read_parquet(out / "prepare" / "units.parquet")
    assert "tau" not in units.columns
    index = json.loads((out / "features" / "index.json").read_text())
    assert not any("tau" in c or "f_fine" in c for s in index["sets"].values() for c in s["columns"])
    cate = gpd.read_parquet(out / "cate" / "cate.parquet")  # GeoParquet: opens as a layer in QGIS
    assert cate.crs.to_epsg() == 4326 and cate.geometry.geom_type.eq("Point").all()
    # the sequential scheme's last split is the K-fold split of the last fold: one fit serves both
    last = cate[cate["fold"] == cate["fold"].max()]
    np.testing.assert_array_equal(last["priority_seq"].to_numpy(), last["tau_hat"].to_numpy())
    earlier = cate[(cate["fold"] > 0) & (cate["fold"] < cate["fold"].max())]
    assert (earlier["priority_seq"] != earlier["tau_hat"]).mean() > 0.9
    first = cate.drop_duplicates("unit_id").set_index("unit_id").geometry
    assert first.reindex(units["unit_id"].astype(str)).geom_equals(units.set_index(units["unit_id"].astype(str))
                                                                     .geometry.to_crs(4326)).all()
    card = json.loads((out / "embed" / "vit_tiny" / "card.json").read_text())
    assert card["family"] == "vit" and card["params"] > 0
    rcf = json.loads((out / "embed" / "rcf" / "card.json").read_text())  # kernels fitted on the study's chips
    assert rcf["family"] == "rcf" and rcf["embed_dim"] == 256 and rcf["config"]["patch_size"] == 3


def test_rerun_is_identical(tiny_study):
    """Deleting the outputs and running every stage again reproduces them byte for byte (figures aside)."""
    params, out = tiny_study
    before = digest_tree(out)
    import shutil
    shutil.rmtree(out)
    run_all(params, out)
    assert digest_tree(out) == before


def test_unknown_params_key(tmp_path, tiny_params, capsys):
    tiny_params["cate"]["n_trees"] = 100
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    assert prepare.main(["--params", str(params), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cate.n_trees" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_input_file(tmp_path, tiny_params, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    assert tile.main(["--params", str(params), "--out", str(tmp_path / "o"),
                      "--units", str(tmp_path / "missing.parquet"), "--scenes", str(params)]) == 2
    assert "missing.parquet" in capsys.readouterr().err


def test_non_binary_treatment(tiny_study, tmp_path, capsys):
    params, out = tiny_study
    units = gpd.read_parquet(out / "prepare" / "units.parquet")
    units.loc[0, "W"] = 2
    units.to_parquet(out / "prepare" / "units.parquet")
    assert tile.main(["--params", str(params), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "units.parquet: W" in err and "0/1" in err


def test_locations_outside_are_dropped_and_counted(tiny_study, tmp_path, capsys):
    params, out = tiny_study
    cfg = yaml.safe_load(params.read_text())
    units = gpd.read_parquet(out / "prepare" / "units.parquet")
    far = units["location_id"] == units["location_id"].iloc[0]
    units.loc[far, "geometry"] = gpd.points_from_xy([10.0] * far.sum(), [10.0] * far.sum())
    units.to_parquet(out / "prepare" / "units.parquet")
    assert tile.main(["--params", str(params), "--out", str(out)]) == 2
    assert "outside all scenes" in capsys.readouterr().err
    cfg["tile"]["on_outside"] = "drop"
    params.write_text(yaml.safe_dump(cfg))
    for stage in (tile, embed, features, cate, evaluate):
        assert stage.main(["--params", str(params), "--out", str(out)]) == 0
    assert f"dropping {int(far.sum())} units" in capsys.readouterr().out
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["n_units"] == len(units) - int(far.sum())


def test_sigkill_mid_stage_leaves_nothing_complete_and_rerun_is_identical(tiny_study):
    """SIGKILL the cate stage while it fits forests: its final artifact is absent, and a rerun reproduces
    the outputs of an uninterrupted run byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params, out = tiny_study
    before = digest_tree(out / "cate")
    cfg = yaml.safe_load(params.read_text())
    cfg["cate"]["n_estimators"] = 40000  # long enough to be killed while fitting (the compiled forest is fast)
    params.write_text(yaml.safe_dump(cfg))
    import shutil
    shutil.rmtree(out / "cate")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.cate", "--params", str(params), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "cate" / "cate.parquet").exists()  # the completion marker is written last
    cfg["cate"]["n_estimators"] = 24
    params.write_text(yaml.safe_dump(cfg))
    assert cate.main(["--params", str(params), "--out", str(out)]) == 0
    assert digest_tree(out / "cate") == before


def test_local_dask_cluster_equals_synchronous_bitwise(tiny_study):
    """Tile, embed and the cate stage's forests on a LocalCluster of 2 worker processes write the same bytes
    as the synchronous run (whose forests used 2 threads: the thread count does not change a bit either)."""
    params, out = tiny_study
    cfg = yaml.safe_load(params.read_text())
    cfg["cate"].update({"n_jobs": 2, "linear_correction": "auto"})
    params.write_text(yaml.safe_dump(cfg))
    import shutil
    shutil.rmtree(out / "cate")
    assert cate.main(["--params", str(params), "--out", str(out)]) == 0
    stages = ("tile/", "embed/", "cate/")
    sync = {k: v for k, v in digest_tree(out).items() if k.startswith(stages)}
    cfg["compute"] = {"scheduler": "local", "workers": 2}
    params.write_text(yaml.safe_dump(cfg))
    for stage in stages:
        shutil.rmtree(out / stage)
    for stage in (tile, embed, cate):
        assert stage.main(["--params", str(params), "--out", str(out)]) == 0
    dask = {k: v for k, v in digest_tree(out).items() if k.startswith(stages)}
    assert any(k.startswith("cate/") for k in dask) and dask == sync


def test_cate_tasks_side_by_side_on_threads_equal_one_at_a_time(tiny_study):
    """Without a cluster the cate stage runs its tasks n_jobs at a time on threads (each fit on one thread):
    the outputs are bitwise those of n_jobs 1 (one task after another)."""
    import shutil

    params, out = tiny_study
    cfg = yaml.safe_load(params.read_text())
    digests = []
    for jobs in (1, 3):
        cfg["cate"].update({"n_jobs": jobs, "linear_correction": "auto"})
        params.write_text(yaml.safe_dump(cfg))
        shutil.rmtree(out / "cate")
        assert cate.main(["--params", str(params), "--out", str(out)]) == 0
        digests.append(digest_tree(out / "cate"))
    assert digests[0] == digests[1]


def test_killed_worker_mid_cate_gives_identical_estimates(tiny_study):
    """A Dask worker process dies while the forests are fitted; its fits are rerun and the cate stage's
    outputs are identical to the synchronous run."""
    import os
    import shutil
    import threading
    import time

    from distributed import Client, LocalCluster

    from pipeline.core.config import load_config
    from pipeline.core.layout import StudyLayout
    from pipeline.procedures.cate import run_cate

    params, out = tiny_study
    cfg = load_config(params)
    layout = StudyLayout(out)
    sync = {k: v for k, v in digest_tree(out).items() if k.startswith("cate/")}
    shutil.rmtree(out / "cate")
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        def kill_one():  # kill a worker while it is fitting
            deadline = time.time() + 60
            while time.time() < deadline:
                busy = [w for w, tasks in client.processing().items() if any("fit_fold" in t for t in tasks)]
                if busy:
                    try:
                        client.run(os._exit, 1, workers=[busy[0]], wait=False)
                    except Exception:
                        pass
                    killed.append(busy[0])
                    return
                time.sleep(0.02)

        threading.Thread(target=kill_one).start()
        run_cate(layout.units, layout.features.root, cfg.cate, cfg.seed, layout.cate.root, False, client)
    assert killed
    assert {k: v for k, v in digest_tree(out).items() if k.startswith("cate/")} == sync


def test_killed_worker_mid_tiling_gives_identical_chips(tiny_study):
    """A Dask worker process dies while tiling; its tasks are rerun and the chips are identical."""
    import os
    import threading
    import time

    import numpy as np
    from distributed import Client, LocalCluster

    from pipeline.core.config import load_config
    from pipeline.core.units import locations_table, read_units
    from pipeline.imagery.scenes import SceneCatalog
    from pipeline.imagery.tiling import tile_locations

    params, out = tiny_study
    cfg = load_config(params)
    locs = locations_table(read_units(out / "prepare" / "units.parquet"))
    cat = SceneCatalog.from_paths(sorted((out / "prepare" / "scenes").glob("*.tif")))
    args = (cat, locs["location_id"].tolist(), locs.geometry.x.to_numpy(), locs.geometry.y.to_numpy(), cfg.tile.scales)
    sync = tile_locations(*args, block_px=64)
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        def kill_one():
            time.sleep(0.5)
            victim = sorted(client.scheduler_info()["workers"])[0]
            try:
                client.run(os._exit, 1, workers=[victim], wait=False)
            except Exception:
                pass
            killed.append(victim)

        threading.Thread(target=kill_one).start()
        dist = tile_locations(*args, block_px=64, client=client)
    assert killed
    for s in sync.chips:
        np.testing.assert_array_equal(sync.chips[s], dist.chips[s])
    assert sync.manifest.equals(dist.manifest)


@pytest.mark.parametrize("mode", ["mean", "concat"])
def test_jitter_variant_of_multiscale_concatenation(tiny_study, mode):
    """Jittered copies of the fine scale are tiled as extra scales and join it averaged or concatenated."""
    import numpy as np

    params, out = tiny_study
    cfg = yaml.safe_load(params.read_text())
    cfg["tile"]["jitter_copies"] = {"scales": ["s240m"], "copies": 3, "jitter_m": [50.0, 150.0], "seed": 1}
    cfg["features"]["jitter"] = mode
    params.write_text(yaml.safe_dump(cfg))
    for stage in (tile, embed, features):
        assert stage.main(["--params", str(params), "--out", str(out)]) == 0
    manifest = __import__("pandas").read_parquet(out / "tile" / "manifest.parquet")
    assert {"s240m@j0", "s240m@j1", "s240m@j2"} <= set(manifest["scale"])
    copy = manifest[manifest["scale"] == "s240m@j0"]
    base = manifest[manifest["scale"] == "s240m"]
    shift = np.hypot(copy["minx"].to_numpy() - base["minx"].to_numpy(),
                     copy["miny"].to_numpy() - base["miny"].to_numpy())
    assert ((shift >= 50 - 1e-6) & (shift <= 150 + 1e-6)).all()
    index = json.loads((out / "features" / "index.json").read_text())
    assert set(index["sets"]) == {"s240m", "s1920m", "all"}  # copies are not scale sets of their own
    fine = [c for c in index["sets"]["s240m"]["columns"] if c.startswith("spectral:")]
    per_window = len(json.loads((out / "embed" / "spectral" / "feature_names.json").read_text()))
    assert len(fine) <= (4 * per_window if mode == "concat" else per_window)
    assert len(fine) > (per_window if mode == "concat" else 0)
    assert cate.main(["--params", str(params), "--out", str(out)]) == 0
