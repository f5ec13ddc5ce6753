"""The study report: one self-contained HTML page (figures embedded, no JavaScript, no web requests) and a
Markdown summary, from a study's output folder. It reads results; it never runs a stage."""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path

import geopandas as gpd
import pandas as pd

from ..core.artifacts import write_with
from ..core.errors import ArtifactError
from ..core.layout import StudyLayout, check_current, load_result
from .figures import plot_cate_map, plot_importance


def _img(path) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def _fmt(v, digits=3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _table(headers, rows, cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|~#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md_escape(value) -> str:
    """``value`` as literal Markdown text on one line: every character with a Markdown (or HTML) meaning is
    escaped, so user strings (titles, scale and set names) can never add markup, links or table cells."""
    return " ".join(str(value).split()).translate(_MD_SPECIAL)


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(map(md_escape, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(md_escape, r)) + " |" for r in rows])


def _study_sections(out) -> tuple[list[str], list[str]]:
    """HTML and Markdown sections of an evaluated CATE study."""
    layout = StudyLayout(out)
    res = load_result(out)
    m = res.metrics
    units = gpd.read_parquet(layout.units)
    manifest = pd.read_parquet(layout.tile.manifest)
    scales = manifest.drop_duplicates("scale")[["scale", "size_m", "px"]]
    n_scenes = int(manifest["scene"].replace("", pd.NA).dropna().nunique())
    ref = m.get("paired", {}).get("reference") or next(iter(m["sets"]))
    with tempfile.TemporaryDirectory() as tmp:
        map_png, imp_png = Path(tmp) / "map.png", Path(tmp) / "imp.png"
        plot_cate_map(res.cate, map_png, ref)
        plot_importance(m, imp_png)
        images = {"toc": _img(layout.evaluate.toc_png), "map": _img(map_png), "importance": _img(imp_png)}
    ate = m["ate"]
    summary = [("units", len(units)), ("clusters", units["cluster_id"].nunique()),
               ("locations", units["location_id"].nunique()), ("treated share", _fmt(units["W"].mean())),
               ("scenes", n_scenes),
               ("scales", ", ".join(f"{r.scale} ({r.size_m:g} m, {r.px} px)" for r in scales.itertuples())),
               ("evaluated units (sequential folds)", m.get("n_evaluated", "")),
               ("bootstrap replicates", m.get("n_boot", ""))]
    rate_rows = []
    for name, e in m["sets"].items():
        for t in ("AUTOC", "QINI"):
            if t in e:
                r = e[t]
                rate_rows.append((name, t, _fmt(r["estimate"]), _fmt(r["std_err"]), _fmt(r["ratio"], 2),
                                  f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", f"{r['p_value']:.2g}"))
    paired = m.get("paired", {})
    paired_rows = [(f"{paired['reference']} - {paired['best_single']}", t, _fmt(paired[t]["estimate"]),
                    _fmt(paired[t]["std_err"]), _fmt(paired[t]["ratio"], 2),
                    f"[{_fmt(paired[t]['ci_low'])}, {_fmt(paired[t]['ci_high'])}]", f"{paired[t]['p_value']:.2g}")
                   for t in ("AUTOC", "QINI") if t in paired]
    sel = m.get("selection", {})
    rate_headers = ("scale set", "target", "RATE", "SE", "RATE Ratio", "95% interval", "p")
    ate_rows = ([("AIPW (cross-fitted forest)", _fmt(ate["aipw"]), _fmt(ate["aipw_se"])),
                 ("difference in means", _fmt(ate["difference_in_means"]), _fmt(ate["difference_in_means_se"]))]
                + ([("true (simulation)", _fmt(ate["true"]), "")] if "true" in ate else []))
    parts = ["<h2>Study</h2>", _table(("", ""), summary),
             "<h2>Average treatment effect</h2>", _table(("estimator", "estimate", "SE"), ate_rows),
             "<h2>RATE by scale set</h2>",
             "<p>Sequential cross-fitting: each evaluation fold is ranked and scored by models fitted on earlier "
             "folds; clustered half-sample bootstrap. The RATE Ratio is estimate / SE "
             "(|ratio| &gt; 1.96: 5 % test).</p>",
             _table(rate_headers, rate_rows, "rate"),
             "<h3>Paired test against the best single scale</h3>", _table(rate_headers, paired_rows),
             f"<p>Held-out choice: <b>{html.escape(str(sel.get('chosen', '')))}</b> chosen on earlier folds; on the "
             f"held-out fold RATE {_fmt(sel.get('held_out', {}).get('estimate'))} "
             f"(SE {_fmt(sel.get('held_out', {}).get('std_err'))}). Ranking many sets on the same data inflates the "
             "winner's ratio.</p>",
             "<h2>TOC curves</h2>", f'<img alt="TOC curves" src="{images["toc"]}">',
             "<h2>CATE map</h2>", f'<img alt="CATE map" src="{images["map"]}">',
             "<h2>Which scale carries the heterogeneity</h2>",
             f'<img alt="importance by scale" src="{images["importance"]}">']
    md = [_md_table(("", ""), summary),
          "## Average treatment effect", _md_table(("estimator", "estimate", "SE"), ate_rows),
          "## RATE by scale set", _md_table(rate_headers, rate_rows),
          "## Paired test against the best single scale", _md_table(rate_headers, paired_rows)]
    return parts, md


def _scaling_sections(out) -> tuple[list[str], list[str]]:
    """HTML and Markdown sections of a scaling-strategy study (complexity and speed figures)."""
    paths = StudyLayout(out).scaling
    m = json.loads(paths.metrics.read_text())
    rows = []
    for base, per in m["exponents"].items():
        for st, e in per.items():
            rows.append((base, st, _fmt(e["theory_acts"], 2), _fmt(e["acts_vs_flops"], 2),
                         _fmt(e.get("time_vs_flops", float("nan")), 2)))
    headers = ("base", "strategy", "activations exponent (theory)", "activations exponent (fitted)",
               f"time exponent ({m.get('device', '')})")
    parts = ["<h2>Model scaling: complexity and speed</h2>",
             "<p>Log-log slopes against FLOPs over the scaling factors "
             f"{m.get('factors')}; theory: activations grow as s^(e_d + e_w/2 + e_r).</p>", _table(headers, rows)]
    for kind, alt in (("acts", "activations against FLOPs"), ("time", "time against FLOPs")):
        if paths.figure(kind).exists():
            parts.append(f'<img alt="{alt}" src="{_img(paths.figure(kind))}">')
    return parts, ["## Model scaling: complexity and speed", _md_table(headers, rows)]


def write_report(out: str | os.PathLike, path: str | os.PathLike, title: str = "Study report",
                 params: str | os.PathLike | None = None):
    """Write one self-contained HTML report (images embedded, no JavaScript) and a Markdown summary
    (same name, ``.md``) from a study's output folder (a CATE study, a scaling study, or both); return the
    HTML path. With ``params`` (the study's ``params.yaml``), results made with other params are refused
    (:func:`pipeline.core.layout.check_current`)."""
    out, path = Path(out), Path(path)
    layout = StudyLayout(out)
    if params is not None and layout.evaluate.metrics.exists():
        check_current(out, params)
    has_study = layout.evaluate.metrics.exists()
    has_scaling = layout.scaling.metrics.exists()
    if not (has_study or has_scaling):
        raise ArtifactError(str(out), "an evaluated study (evaluate/metrics.json) or a scaling study",
                            "neither", "run the study first (dvc repro or mscate run)")
    parts, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {md_escape(title)}"]
    for present, sections in ((has_study, _study_sections), (has_scaling, _scaling_sections)):
        if present:
            p, m = sections(out)
            parts += p
            md += m
    css = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}table{border-collapse:collapse;"
           "margin:0.5em 0}td,th{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}img{max-width:100%}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{css}</style></head><body>{''.join(parts)}</body></html>")
    write_with(path, lambda t: Path(t).write_text(doc))
    md.append(f"Figures: see {md_escape(path.name)}.")
    write_with(path.with_suffix(".md"), lambda t: Path(t).write_text("\n\n".join(md) + "\n"))
    return path
