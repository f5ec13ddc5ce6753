"""A non-editable install carries everything a study needs: the sub-packages and the encoder presets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import yaml
from conftest import REPO, TINY_PARAMS


def _build_isolation_flags() -> list[str]:
    """Build with this environment's setuptools when it is new enough (no download), else in isolation."""
    try:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 68:
            return ["--no-build-isolation"]
    except ImportError:
        pass
    return []


def test_non_editable_install_runs_a_study_with_a_preset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for folder in ("pipeline", "models", "configs"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *_build_isolation_flags(),
                    "--target", str(site), str(src)], check=True, capture_output=True)
    assert (site / "models" / "presets" / "vit_tiny.yaml").is_file()
    shutil.rmtree(src)  # the installed copy must not need the source tree

    study = tmp_path / "study"
    study.mkdir()
    params = json.loads(json.dumps(TINY_PARAMS))
    params["embed"]["encoders"] = ["vit_tiny"]
    params["features"]["encoders"] = ["vit_tiny"]
    params["features"]["pca"] = 4
    (study / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MSCATE_ENCODER_PRESETS", None)
    probe = subprocess.run([sys.executable, "-c", "import pipeline, models.registry as r; "
                            "print(pipeline.__file__); print(r.PRESET_DIR)"],
                           cwd=study, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(p.startswith(str(site)) for p in probe), probe
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "."], cwd=study, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((study / "out" / "evaluate" / "metrics.json").read_text())
    card = json.loads((study / "out" / "embed" / "vit_tiny" / "card.json").read_text())
    assert card["family"] == "vit" and set(metrics["sets"]) == {"s240m", "s1920m", "all"}
