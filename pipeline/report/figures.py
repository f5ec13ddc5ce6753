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


def plot_cate_histogram(cate, path: str | os.PathLike, set_name: str) -> None:
    """Distribution of the out-of-fold CATEs of one scale set (units), with their mean."""
    tau = cate.loc[cate["set"] == set_name, "tau_hat"].to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    ax.hist(tau, bins=40, color="#4c72b0", edgecolor="white")
    ax.axvline(tau.mean(), color="black", lw=1, label=f"mean {tau.mean():.3f}")
    ax.set_xlabel(f"out-of-fold CATE ({set_name})")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_gates(gates: dict, path: str | os.PathLike) -> None:
    """Sorted group effects: mean DR score per CATE quartile with 95 % intervals."""
    groups = gates["groups"]
    x = [g["group"] for g in groups]
    est = [g["estimate"] for g in groups]
    err = [[g["estimate"] - g["ci_low"] for g in groups], [g["ci_high"] - g["estimate"] for g in groups]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    ax.errorbar(x, est, yerr=err, fmt="o", capsize=4, color="#c44e52")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"Q{g}" for g in x])
    ax.set_xlabel(f"quartile of the CATE ({gates['set']}; Q1 lowest)")
    ax.set_ylabel("group effect (mean DR score)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
