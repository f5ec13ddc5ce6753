"""Figures and tables made by the project itself (PNG, no JavaScript)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_toc(toc: pd.DataFrame, path: str | os.PathLike, title: str = "TOC") -> None:
    """TOC curves (estimate with a 95 % band) per scale set, written as PNG to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, g in toc.groupby("set", sort=False):
        g = g.sort_values("q")
        line, = ax.plot(g["q"], g["estimate"], marker="o", ms=3, label=name)
        ax.fill_between(g["q"], g["estimate"] - 1.96 * g["std_err"], g["estimate"] + 1.96 * g["std_err"],
                        color=line.get_color(), alpha=0.12)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("treated fraction q (highest priority first)")
    ax.set_ylabel("TOC(q) = ATE among top q - ATE")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_scaling(table: pd.DataFrame, kind: str, path: str | os.PathLike) -> None:
    """Log-log curves per base encoder: activations (``kind='acts'``) or time per image (``'time'``) against
    FLOPs, one line per scaling strategy, as in Dollár, Singh & Girshick (2021)."""
    import numpy as np

    bases = list(dict.fromkeys(table["base"]))
    fig, axes = plt.subplots(1, len(bases), figsize=(5.5 * len(bases), 4.2), dpi=120, squeeze=False)
    for ax, b in zip(axes[0], bases):
        for st, g in table[table["base"] == b].groupby("strategy", sort=False):
            g = g.sort_values("flops")
            y = g["acts"] if kind == "acts" else 1000.0 / g["images_per_s"]
            slope = np.polyfit(np.log(g["flops"]), np.log(y), 1)[0]
            ax.loglog(g["flops"], y, marker="o", ms=3, label=f"{st} ({slope:.2f})")
        ax.set_xlabel("FLOPs (multiply-adds per image)")
        ax.set_ylabel("activations per image" if kind == "acts" else "ms per image")
        ax.set_title(b)
        ax.legend(fontsize=7, title="strategy (fitted exponent)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_cate_map(cate, path: str | os.PathLike, set_name: str) -> None:
    """Locations coloured by their mean CATE (one scale set), in longitude/latitude."""
    g = cate[cate["set"] == set_name]
    loc = g.groupby("location_id").agg(tau=("tau_hat", "mean"), x=("geometry", lambda s: s.iloc[0].x),
                                       y=("geometry", lambda s: s.iloc[0].y), n=("unit_id", "size"))
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=120)
    sc = ax.scatter(loc["x"], loc["y"], c=loc["tau"], s=12 + 4 * loc["n"], cmap="viridis", edgecolor="k", lw=0.3)
    fig.colorbar(sc, ax=ax, label=f"mean out-of-fold CATE ({set_name})")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title("CATE by location (size = units)")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_importance(metrics: dict, path: str | os.PathLike) -> None:
    """Share of the CATE forests' importance carried by each scale (and the covariates), per scale set."""
    import numpy as np

    sets = [s for s, e in metrics["sets"].items() if e.get("importance_by_scale")]
    keys = list(dict.fromkeys(k for s in sets for k in metrics["sets"][s]["importance_by_scale"]))
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(sets))), dpi=120)
    left = np.zeros(len(sets))
    for k in keys:
        vals = np.array([metrics["sets"][s]["importance_by_scale"].get(k, 0.0) for s in sets])
        ax.barh(sets, vals, left=left, label=k)
        left += vals
    ax.set_xlabel("share of forest importance")
    ax.legend(fontsize=7, ncol=min(4, len(keys)), loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _img(path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def _fmt(v, digits=3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _table(headers, rows, cls: str = "") -> str:
    import html

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _study_sections(out) -> tuple[list[str], list[str]]:
    """HTML and Markdown sections of an evaluated CATE study."""
    import html
    import tempfile
    from pathlib import Path

    import geopandas as gpd

    from .api import load_result

    res = load_result(out)
    m = res.metrics
    units = gpd.read_parquet(out / "prepare" / "units.parquet")
    manifest = pd.read_parquet(out / "tile" / "manifest.parquet")
    scales = manifest.drop_duplicates("scale")[["scale", "size_m", "px"]]
    n_scenes = int(manifest["scene"].replace("", pd.NA).dropna().nunique())
    ref = m.get("paired", {}).get("reference") or next(iter(m["sets"]))
    with tempfile.TemporaryDirectory() as tmp:
        map_png, imp_png = Path(tmp) / "map.png", Path(tmp) / "imp.png"
        plot_cate_map(res.cate, map_png, ref)
        plot_importance(m, imp_png)
        images = {"toc": _img(out / "evaluate" / "toc.png"), "map": _img(map_png), "importance": _img(imp_png)}
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
             "folds; clustered half-sample bootstrap. The RATE Ratio is estimate / SE (|ratio| &gt; 1.96: 5 % test).</p>",
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
    md = [_md_table(("", ""), summary), "## Average treatment effect", _md_table(("estimator", "estimate", "SE"), ate_rows),
          "## RATE by scale set", _md_table(rate_headers, rate_rows),
          "## Paired test against the best single scale", _md_table(rate_headers, paired_rows)]
    return parts, md


def _scaling_sections(out) -> tuple[list[str], list[str]]:
    """HTML and Markdown sections of a scaling-strategy study (complexity and speed figures)."""
    import json

    m = json.loads((out / "scaling" / "metrics.json").read_text())
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
    for name, alt in (("acts_vs_flops.png", "activations against FLOPs"), ("time_vs_flops.png", "time against FLOPs")):
        if (out / "scaling" / name).exists():
            parts.append(f'<img alt="{alt}" src="{_img(out / "scaling" / name)}">')
    return parts, ["## Model scaling: complexity and speed", _md_table(headers, rows)]


def write_report(out: str | os.PathLike, path: str | os.PathLike, title: str = "Study report"):
    """Write one self-contained HTML report (images embedded, no JavaScript) and a Markdown summary
    (same name, ``.md``) from a study's output folder (a CATE study, a scaling study, or both); return the
    HTML path."""
    import html
    from pathlib import Path

    from .artifacts import write_with
    from .errors import ArtifactError

    out, path = Path(out), Path(path)
    has_study = (out / "evaluate" / "metrics.json").exists()
    has_scaling = (out / "scaling" / "metrics.json").exists()
    if not (has_study or has_scaling):
        raise ArtifactError(str(out), "an evaluated study (evaluate/metrics.json) or a scaling study",
                            "neither", "run the study first (dvc repro or mscate run)")
    parts, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {title}"]
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
    md.append(f"Figures: see {path.name}.")
    write_with(path.with_suffix(".md"), lambda t: Path(t).write_text("\n\n".join(md) + "\n"))
    return path


def plot_extrapolation_map(points, path: str | os.PathLike, note: str = "") -> None:
    """Trial locations (circles) and extrapolated locations (triangles) coloured by CATE, over the convex
    hull of all points (an outline of the surveyed area, not a border)."""
    import numpy as np
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(7, 6.5), dpi=120)
    hull = points.geometry.union_all().convex_hull
    if hull.geom_type == "Polygon":
        xs, ys = hull.exterior.xy
        ax.fill(xs, ys, color="#eeeeee", zorder=0, label="convex hull of all locations")
    norm = Normalize(*np.nanpercentile(points["tau_hat"], [2, 98]))
    for kind, marker, size in (("extrapolation", "^", 16), ("trial (out-of-fold)", "o", 22)):
        g = points[points["kind"] == kind]
        if len(g):
            sc = ax.scatter(g.geometry.x, g.geometry.y, c=g["tau_hat"], cmap="viridis", norm=norm, marker=marker,
                            s=size, edgecolor="k", lw=0.3, label=kind, zorder=2 if kind.startswith("trial") else 1)
    fig.colorbar(sc, ax=ax, label="CATE (tau hat)")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title("CATE map: trial locations and extrapolation")
    ax.legend(fontsize=7, loc="lower left")
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
