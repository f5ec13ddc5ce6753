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
from .figures import (
    plot_cate_histogram,
    plot_cate_map,
    plot_cate_map_over_scenes,
    plot_chip_strips,
    plot_gates,
    plot_importance,
)

PACKAGES = ("mscate", "numpy", "pandas", "scikit-learn", "econml", "torch", "timm", "rasterio", "geopandas", "dask",
            "dvc")


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
        pngs = {k: Path(tmp) / f"{k}.png" for k in ("map", "importance", "hist", "gates", "chips")}
        if not plot_cate_map_over_scenes(res.cate, _scene_rows(layout), pngs["map"], ref):
            plot_cate_map(res.cate, pngs["map"], ref)
        _chip_strips(layout, res.cate, ref, pngs["chips"])
        plot_importance(m, pngs["importance"])
        plot_cate_histogram(res.cate, pngs["hist"], ref)
        if "gates" in m:
            plot_gates(m["gates"], pngs["gates"])
        images = {"toc": _img(layout.evaluate.toc_png), **{k: _img(p) for k, p in pngs.items() if p.exists()}}
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
             "<h2>TOC curves</h2>", f'<img alt="TOC curves" src="{images["toc"]}">']
    md = [_md_table(("", ""), summary),
          "## Average treatment effect", _md_table(("estimator", "estimate", "SE"), ate_rows),
          "## RATE by scale set", _md_table(rate_headers, rate_rows),
          "## Paired test against the best single scale", _md_table(rate_headers, paired_rows)]
    for title, headers, rows, note in _inference_tables(m, ref):
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>", _table(headers, rows)]
        md += [f"## {md_escape(title)}", md_escape(note), _md_table(headers, rows)]
        if title.startswith("Sorted group effects") and "gates" in images:
            parts.append(f'<img alt="sorted group effects" src="{images["gates"]}">')
    parts += ["<h2>CATE distribution</h2>", f'<img alt="CATE histogram" src="{images["hist"]}">',
              "<h2>CATE map</h2>", f'<img alt="CATE map" src="{images["map"]}">',
              *(["<h2>What each scale shows</h2>", f'<img alt="chips by CATE" src="{images["chips"]}">']
                if "chips" in images else []),
              "<h2>Which scale carries the heterogeneity</h2>",
              f'<img alt="importance by scale" src="{images["importance"]}">']
    warn_rows, prov_rows = _warnings_and_provenance(layout, m)
    if warn_rows:
        parts[:0] = ["<h2>Warnings</h2>", _table(("stage", "warning"), warn_rows, "warnings")]
        md[:0] = ["## Warnings", _md_table(("stage", "warning"), warn_rows)]
    parts += ["<h2>Provenance</h2>", _table(("", ""), prov_rows, "provenance")]
    params = layout.out.parent / "params.yaml"
    if params.is_file():  # the params the study ran with (checked against the results by write_report)
        parts.append("<details><summary>params.yaml</summary><pre>" + html.escape(params.read_text())
                     + "</pre></details>")
    md += ["## Provenance", _md_table(("", ""), prov_rows)]
    return parts, md


def _scene_rows(layout: StudyLayout) -> list[dict]:
    """The chip store's scenes (path resolved against the study folder, where the stages ran)."""
    if not layout.tile.scenes.is_file():
        return []
    rows = pd.read_parquet(layout.tile.scenes)[["path", "crs", "bands"]].to_dict("records")
    for r in rows:
        p = Path(r["path"])
        r["path"] = str(p if p.is_absolute() else layout.out.parent / p)
    return rows


def _chip_strips(layout: StudyLayout, cate, ref: str, path: Path, k: int = 5) -> None:
    """The chip strips figure (lowest and highest mean CATE locations, per scale), when the store is there."""
    from ..imagery.tiling import read_chip_store

    if not layout.tile.manifest.is_file() or not layout.tile.locations.is_file():
        return
    _, chips, manifest = read_chip_store(layout.tile.root)
    chips = {s: a for s, a in chips.items() if "@j" not in s}
    locs = pd.read_parquet(layout.tile.locations)
    row_of = pd.Series(locs["row"].to_numpy() if "row" in locs else range(len(locs)),
                       index=locs["location_id"].astype(str))
    tau = cate[cate["set"] == ref].groupby(cate["location_id"].astype(str))["tau_hat"].mean().sort_values()
    tau = tau[tau.index.isin(row_of.index)]
    if len(tau) < 2 * k:
        return
    bands = pd.read_parquet(layout.tile.scenes)["bands"].iloc[0].split(",") if layout.tile.scenes.is_file() else []
    plot_chip_strips(chips, row_of[tau.index[:k]], row_of[tau.index[-k:]], bands or ["b1", "b2", "b3"], path,
                     tau.iloc[:k], tau.iloc[-k:])


def _inference_tables(m: dict, ref: str) -> list[tuple[str, tuple, list, str]]:
    """(title, headers, rows, note) of the calibration test, the sorted group effects and the best linear
    projection, as ``metrics.json`` holds them."""
    tables = []
    calib = [(name, _fmt(c["mean_prediction"]), _fmt(c["mean_prediction_se"]), _fmt(c["differential_prediction"]),
              _fmt(c["differential_prediction_se"]), f"{c['differential_p_one_sided']:.2g}")
             for name, e in m["sets"].items() if (c := e.get("calibration"))]
    if calib:
        tables.append(("Calibration test", ("scale set", "mean prediction", "SE", "differential prediction", "SE",
                                            "p (one-sided)"), calib,
                       "Within each evaluation fold of the sequential scheme, the DR scores regressed on the mean "
                       "CATE and on its deviation, both from models fitted on earlier folds (grf's "
                       "test_calibration in DR-score form), folds averaged: a mean-prediction coefficient near 1 "
                       "says the average is right, a differential coefficient above 0 that the CATEs rank real "
                       "heterogeneity (1: calibrated slope)."))
    if "gates" in m:
        g = m["gates"]
        tables.append((f"Sorted group effects (GATES, {g['set']})",
                       ("quartile", "effect", "SE", "95% interval", "units"),
                       [(f"Q{x['group']}", _fmt(x["estimate"]), _fmt(x["std_err"]),
                         f"[{_fmt(x['ci_low'])}, {_fmt(x['ci_high'])}]", x["n"]) for x in g["groups"]],
                       f"{g['note']} (Q1: lowest CATE)."))
    if "blp" in m:
        tables.append(("Best linear projection on the covariates", ("term", "estimate", "SE", "p"),
                       [(t["term"], _fmt(t["estimate"]), _fmt(t["std_err"]), f"{t['p_value']:.2g}")
                        for t in m["blp"]["terms"]], m["blp"]["note"] + "."))
    return tables


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _warnings_and_provenance(layout: StudyLayout, m: dict) -> tuple[list, list]:
    """The warnings the stages recorded (ingest, tiling) and the provenance rows: package versions, the
    params file's digest, the units table's digest, ingest counts and valid fractions per scale."""
    from importlib.metadata import PackageNotFoundError, version

    ingest = json.loads(layout.ingest_report.read_text()) if layout.ingest_report.is_file() else {}
    tiling = json.loads(layout.tile.report.read_text()) if layout.tile.report.is_file() else {}
    cate = json.loads(layout.cate.warnings.read_text()) if layout.cate.warnings.is_file() else []
    warn_rows = ([("ingest", w) for w in ingest.get("warnings", [])] + [("tile", w) for w in tiling.get("warnings", [])]
                 + [("cate", w) for w in cate])
    versions = []
    for pkg in PACKAGES:
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    params = layout.out.parent / "params.yaml"
    rows = [("packages", ", ".join(versions))]
    if params.is_file():
        rows.append(("params.yaml (SHA-256)", _sha256(params)))
    rows.append(("units table (SHA-256)", _sha256(layout.units)))
    if ingest:
        counts = {k: ingest[k] for k in ("n_units", "n_locations", "n_clusters", "dropped_missing_outcome")
                  if k in ingest}
        if ingest.get("treatment_codes"):
            counts["treatment recoded"] = ingest["treatment_codes"]
        if ingest.get("imputed_covariates"):
            counts["imputed covariates"] = ingest["imputed_covariates"]
        rows.append(("ingest", "; ".join(f"{k}: {v}" for k, v in counts.items())))
    if tiling:
        rows.append(("scenes", ", ".join(map(str, tiling.get("scenes", [])))))
        rows.append(("locations tiled / dropped", f"{tiling.get('n_locations', '')} / {tiling.get('n_dropped', 0)}"))
        rows.append(("median valid fraction per scale", ", ".join(
            f"{k} {_fmt(v, 2)}" for k, v in tiling.get("median_valid_fraction", {}).items())))
    rows.append(("evaluation", m.get("procedure", "")))
    return warn_rows, rows


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


def _quality_sections(out) -> tuple[list[str], list[str]]:
    """HTML and Markdown sections of the scaling study's quality part (probe error against compute)."""
    paths = StudyLayout(out).quality
    m = json.loads(paths.metrics.read_text())
    rows = []
    for base, v in m["verdict"].items():
        for st, t in v["seconds_to_target"].items():
            f = v["flops_to_target"][st]
            rows.append((base, st, _fmt(v["best_error"][st], 3), _fmt(v["target_error"], 3),
                         "not reached" if t is None else _fmt(t, 1), "not reached" if f is None else _fmt(f / 1e6, 1),
                         "yes" if st == v["fastest"] else ""))
    headers = ("base", "strategy", "best probe error", "target error", f"seconds to target ({m.get('device', '')})",
               "MFLOPs to target", "fastest")
    refs = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in m.get("references", {}).items())
    intro = (f"Every model pretrained with {m.get('images_seen', 0):,} images (VICReg), then a cross-validated ridge "
             f"probe on targets without trial outcomes ({', '.join(m.get('targets', []))}); error = 1 - R², mean "
             f"of targets. References: {refs}. Seeds: {m.get('seeds')}.")
    parts = ["<h2>Model scaling: probe error against compute</h2>", f"<p>{html.escape(intro)}</p>",
             _table(headers, rows)]
    model_headers = ("base", "strategy", "s", "MFLOPs", "params (k)", "pretraining images/s", "pretraining s",
                     "probe error", "seed SD")
    model_rows = []
    if paths.table.exists():
        t = pd.read_csv(paths.table)
        t = t[~t["strategy"].isin(["spectral", "init"])]
        g = t.groupby(["base", "strategy", "s"], sort=False).agg(
            flops=("flops", "mean"), params=("params", "mean"), ips=("pretrain_images_per_s", "mean"),
            secs=("pretrain_s", "mean"), err=("error", "mean"), sd=("error", "std")).reset_index()
        model_rows = [(r.base, r.strategy, _fmt(r.s, 0), _fmt(r.flops / 1e6, 2), _fmt(r.params / 1e3, 0),
                       _fmt(r.ips, 0), _fmt(r.secs, 1), _fmt(r.err, 3), _fmt(r.sd, 3)) for r in g.itertuples()]
        parts.append(_table(model_headers, model_rows))
    for against, alt in (("flops", "probe error against FLOPs"), ("time", "probe error against time")):
        if paths.figure(against).exists():
            parts.append(f'<img alt="{alt}" src="{_img(paths.figure(against))}">')
    return parts, ["## Model scaling: probe error against compute", md_escape(intro), _md_table(headers, rows),
                   _md_table(model_headers, model_rows)]


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
    has_quality = layout.quality.metrics.exists()
    if not (has_study or has_scaling or has_quality):
        raise ArtifactError(str(out), "an evaluated study (evaluate/metrics.json) or a scaling study",
                            "neither", "run the study first (dvc repro or mscate run)")
    parts, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {md_escape(title)}"]
    for present, sections in ((has_study, _study_sections), (has_scaling, _scaling_sections),
                              (has_quality, _quality_sections)):
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
