"""The package's floors: imports run one way, every output path and default has one owner, the dvc.yaml
files are generated from the one stage graph."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

# floor of each part of the project; a module may import only from floors below its own (and from its own
# sub-package); imagery and estimate share a floor and must not import each other
FLOORS = {
    "models": 0, "pipeline.core": 1, "pipeline.imagery": 2, "pipeline.estimate": 2, "pipeline.report": 3,
    "pipeline.procedures": 4, "pipeline.stages": 5, "pipeline.api": 5, "pipeline.cli": 5, "pipeline": 5,
}


def part_of(module: str) -> str:
    """The part (floor member) of a module; the entry points (stages, api, cli) form one part."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            part = ".".join(parts[:n])
            return "pipeline" if FLOORS[part] == FLOORS["pipeline"] else part
    raise KeyError(module)


def project_modules() -> dict[str, Path]:
    out = {}
    for root in ("pipeline", "models"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every project module imported anywhere in the file (module level and inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import tile` names a module
    modules = project_modules()
    return {m for m in found if m in modules and m != name}


def test_imports_run_down_the_floors_only():
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        mine = part_of(name)
        for dep in imports_of(name, path):
            theirs = part_of(dep)
            if theirs == mine:
                continue
            if FLOORS[theirs] >= FLOORS[mine]:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports that run up or across a floor:\n" + "\n".join(bad)


def test_models_never_import_pipeline_and_statistics_never_import_torch():
    modules = project_modules()
    for name, path in modules.items():
        text = path.read_text()
        if name.startswith("models"):
            assert not re.search(r"^\s*(from|import) pipeline", text, re.M), name
        if name.startswith(("pipeline.estimate", "pipeline.core", "pipeline.report")):
            assert not re.search(r"^\s*(from|import) (torch|timm)\b", text, re.M), name
            assert not re.search(r"^\s*from models(\.(encoders|registry|weights|complexity))?\s+import", text,
                                 re.M), name


def test_no_import_circle():
    modules = project_modules()
    graph = {name: imports_of(name, path) for name, path in modules.items()}
    # package __init__ files re-export lazily; an edge into a package means "the package's own code"
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_statistics_import_without_torch():
    """The statistics (RATE, inference, the CATE estimator) and the config load without torch or timm."""
    import subprocess

    code = ("import sys\n"
            "import pipeline.estimate.rate, pipeline.estimate.inference, pipeline.estimate.cate, pipeline.core.config\n"
            "import pipeline as mc; mc.rate; mc.CausalForestCATE\n"
            "loaded = sorted(m for m in ('torch', 'timm') if m in sys.modules)\n"
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _string_constants(path: Path) -> set[str]:
    """String literals of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.add(node.value)
        if isinstance(node, ast.JoinedStr):
            out |= {v.value for v in node.values if isinstance(v, ast.Constant)}
    return out


def test_every_output_path_is_defined_in_the_layout_only():
    layout = REPO / "pipeline" / "core" / "layout.py"
    names = {m for s in _string_constants(layout) for m in re.findall(r"[\w.-]+\.(?:parquet|json|npy|csv|png|zarr"
                                                                        r"|html|md|tif|sha256)\b", s)}
    names |= {"prepare", "tile", "embed", "features", "cate", "evaluate", "scaling", "extrapolate", "done"}
    names.discard(".md")
    assert {"units.parquet", "metrics.json", "manifest.parquet", "chips.zarr", "cate.parquet"} <= names
    offenders = []
    for name, path in project_modules().items():
        if path == layout or not name.startswith("pipeline"):
            continue
        for s in _string_constants(path):
            for n in names:
                # a path literal: the name itself, or a name inside a slash-separated path
                if s == n and "." in n or re.search(rf"(^|/){re.escape(n)}(/|$)", s) and "/" in s:
                    offenders.append(f"{name}: {s!r}")
    assert not offenders, "output paths spelled outside pipeline/core/layout.py:\n" + "\n".join(offenders)


def test_default_and_choice_lists_live_in_the_schema():
    """Every choice list is declared once in the schema and used by validation; no module repeats one."""
    from pipeline.core import config

    for cls in (config.TileConfig, config.CateConfig, config.FeaturesConfig, config.DataConfig):
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            if choices:
                assert f.default in choices
                bad = dataclasses.replace(cls(**({"scales": ()} if cls is config.TileConfig else {})),
                                          **{f.name: "no-such-choice"})
                with pytest.raises(config.ConfigError):
                    config._check_choices(bad, cls.__name__, "test")
    literal = re.compile(r"""\(\s*["']causal_forest["']\s*,\s*["']dr_forest["']\s*\)|"""
                         r"""\(\s*["']none["']\s*,\s*["']ridge["']\s*,\s*["']auto["']\s*\)|"""
                         r"""\(\s*["']average["']\s*,\s*["']nearest["']\s*\)""")
    for name, path in project_modules().items():
        if name != "pipeline.core.config":
            assert not literal.search(path.read_text()), f"{name} repeats a choice list of the schema"


def test_rendered_params_round_trip_to_the_schema_defaults():
    from pipeline.core.config import Config, config_from_dict, render_params

    text = render_params()
    assert config_from_dict(yaml.safe_load(text)) == Config()
    assert "# " in text and "linear_correction: auto" in text and "[none | ridge | auto]" in text
    custom = {"cate": {"folds": 3, "propensity": "share"}, "tile": {"scales": [{"name": "a", "size_m": 90.0,
                                                                               "px": 4}]}}
    cfg = config_from_dict(yaml.safe_load(render_params(custom, ["seed", "tile", "cate"])))
    assert cfg.cate.folds == 3 and cfg.cate.propensity == "share" and cfg.tile.scales[0].px == 4


def _generator():
    spec = importlib.util.spec_from_file_location("write_dvc_yaml", REPO / "studies" / "write_dvc_yaml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dvc_yaml_files_are_generated_from_the_stage_graph():
    for path, text in _generator().expected().items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run python studies/write_dvc_yaml.py"


def test_stage_graph_matches_entry_points_and_api():
    import pipeline.stages
    from pipeline.api import Study
    from pipeline.core.layout import STAGE_MODULES, STAGES

    for name in STAGE_MODULES:
        assert importlib.util.find_spec(f"{pipeline.stages.__name__}.{name}") is not None, name
    for spec in STAGES:
        assert callable(getattr(Study, spec.name)), spec.name
    for path in (REPO / "dvc.yaml", REPO / "studies" / "uganda" / "dvc.yaml"):
        stages = yaml.safe_load(path.read_text())["stages"]
        for spec in STAGES:
            if spec.name in stages:
                assert stages[spec.name]["params"][: len(spec.params)] == list(spec.params)
                for dep in stages[spec.name].get("deps", []):
                    if not dep.startswith("out/"):
                        assert (path.parent / dep).exists(), f"{path}: {dep} does not exist"


def test_library_defaults_are_the_schema_defaults():
    """Keyword defaults of the library functions that mirror params keys come from the schema."""
    import inspect

    from pipeline.core import config
    from pipeline.estimate.cate import CausalForestCATE
    from pipeline.imagery.embedding import embed_chips
    from pipeline.imagery.tiling import tile_locations

    for func, cls in ((CausalForestCATE, config.CateConfig), (tile_locations, config.TileConfig),
                      (embed_chips, config.EmbedConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, p in inspect.signature(func).parameters.items():
            if name in defaults and p.default is not inspect.Parameter.empty and p.default is not None:
                assert p.default == defaults[name], f"{func.__name__}({name}={p.default!r}) != {cls.__name__}"
