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


def plot_quality(table: pd.DataFrame, metrics: dict, against: str, path: str | os.PathLike) -> None:
    """Probe error of every scaled, pretrained encoder against its FLOPs (``against='flops'``) or its
    pretraining wall time (``'time'``), one line per strategy from the base (s = 1) up; dashed: spectral
    statistics and the base's random initialisation; dotted: the common target error of the verdict."""
    x = "flops" if against == "flops" else "pretrain_s"
    bases = [b for b in dict.fromkeys(table["base"]) if b != "-"]
    fig, axes = plt.subplots(1, len(bases), figsize=(5.5 * len(bases), 4.2), dpi=120, squeeze=False)
    spectral = metrics.get("references", {}).get("spectral")
    for ax, b in zip(axes[0], bases):
        g = table[table["base"] == b]
        base = g[g["strategy"] == "base"]
        for st in [s for s in dict.fromkeys(g["strategy"]) if s not in ("base", "init")]:
            c = pd.concat([base, g[g["strategy"] == st]]).groupby("s")[[x, "error"]].mean().sort_index()
            ax.plot(c[x], c["error"], marker="o", ms=3, label=st, lw=2.2 if st == "dWr" else 1.2)
        init = metrics.get("references", {}).get(f"{b} init")
        for val, lab, col in ((spectral, "spectral statistics", "0.4"), (init, "random init (s = 1)", "0.7")):
            if val is not None:
                ax.axhline(val, ls="--", lw=0.9, color=col, label=lab)
        v = metrics.get("verdict", {}).get(b)
        if v:
            ax.axhline(v["target_error"], ls=":", lw=0.9, color="k", label="target error")
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per image (multiply-adds)" if against == "flops"
                      else f"pretraining wall time, s ({metrics.get('device', '')})")
        ax.set_ylabel("probe error (1 - CV R², mean of targets)")
        ax.set_title(f"{b}: {metrics.get('images_seen', 0):,} images seen per model", fontsize=9)
        ax.legend(fontsize=7)
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


def rgb_indices(band_names) -> list[int]:
    """Indices (0-based) of the red, green and blue bands by name (Landsat names or band numbers of OLI /
    TM-ETM+ files), else the first three bands (or the one band, as grey)."""
    names = [str(b).lower() for b in band_names]
    for trio in (("red", "green", "blue"), ("sr_b4", "sr_b3", "sr_b2"), ("b4", "b3", "b2")):
        if all(t in names for t in trio):
            return [names.index(t) for t in trio]
    return list(range(min(3, len(names)))) or [0]


def _stretch(rgb):
    """Percentile stretch (2-98 %) to [0, 1], NaN shown black."""
    import numpy as np

    finite = rgb[np.isfinite(rgb)]
    if not finite.size:
        return np.zeros_like(rgb)
    lo, hi = np.percentile(finite, [2, 98])
    return np.nan_to_num(np.clip((rgb - lo) / (hi - lo if hi > lo else 1.0), 0, 1))


def plot_cate_map_over_scenes(cate, scenes, path: str | os.PathLike, set_name: str, max_px: int = 900) -> bool:
    """Locations coloured by their mean CATE over the imagery (a decimated true-colour view of the scenes in
    the first scene's CRS; up to four scenes). ``scenes``: rows with ``path``, ``crs`` and ``bands``. Returns
    False (nothing written) when no scene can be drawn or the drawn scenes hold fewer than 80 % of the
    locations."""
    import numpy as np
    import rasterio
    from pyproj import Transformer

    usable = [s for s in scenes if os.path.exists(s["path"]) and s["crs"] == scenes[0]["crs"]][:4]
    if not usable:
        return False
    g = cate[cate["set"] == set_name]
    loc = g.groupby("location_id").agg(tau=("tau_hat", "mean"), x=("geometry", lambda s: s.iloc[0].x),
                                       y=("geometry", lambda s: s.iloc[0].y))
    xs, ys = Transformer.from_crs(4326, usable[0]["crs"], always_xy=True).transform(loc["x"].to_numpy(),
                                                                                      loc["y"].to_numpy())
    views, inside = [], np.zeros(len(loc), dtype=bool)
    for s in usable:  # each scene opened once: its decimated true-colour view and its bounds
        with rasterio.open(s["path"]) as ds:
            step = max(1, int(np.ceil(max(ds.width, ds.height) / max_px)))
            # a scene stacked from band files is drawn from its first file (grey) when it lacks the RGB bands
            idx = [i + 1 for i in rgb_indices(str(s["bands"]).split(",")) if i < ds.count] or [1]
            img = ds.read(idx, out_shape=(len(idx), ds.height // step, ds.width // step), masked=True)
            views.append((np.moveaxis(img.astype(float).filled(np.nan), 0, -1), ds.bounds))
        b = views[-1][1]
        inside |= (xs >= b.left) & (xs <= b.right) & (ys >= b.bottom) & (ys <= b.top)
    if inside.mean() < 0.8:  # many small scenes (chips around each village): a background would mislead
        return False
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    for img, b in views:
        ax.imshow(_stretch(img) if img.shape[-1] == 3 else _stretch(img[..., 0]), cmap="gray",
                  extent=(b.left, b.right, b.bottom, b.top), zorder=0)
    sc = ax.scatter(xs, ys, c=loc["tau"], s=18, cmap="viridis", edgecolor="white", lw=0.4, zorder=2)
    fig.colorbar(sc, ax=ax, label=f"mean out-of-fold CATE ({set_name})")
    ax.set_title(f"CATE by location over the imagery ({usable[0]['crs']})")
    ax.set_xlabel("easting (m)")
    ax.set_ylabel("northing (m)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_chip_strips(chips: dict, rows_low, rows_high, band_names, path: str | os.PathLike, tau_low, tau_high) -> None:
    """Per scale (figure rows), the chips of the locations with the lowest and the highest CATE (columns),
    true colour with one stretch per scale, so a reader sees what each scale shows."""
    import numpy as np

    idx = rgb_indices(band_names)
    cols = list(rows_low) + list(rows_high)
    fig, axes = plt.subplots(len(chips), len(cols), figsize=(1.3 * len(cols), 1.45 * len(chips)), dpi=110,
                             squeeze=False)
    for r, (scale, arr) in enumerate(chips.items()):
        imgs = [np.moveaxis(np.asarray(arr[int(i)], dtype=float)[idx], 0, -1) for i in cols]
        stretched = _stretch(np.stack(imgs))
        for c, img in enumerate(stretched):
            ax = axes[r][c]
            ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                tau = (list(tau_low) + list(tau_high))[c]
                ax.set_title(("low" if c < len(rows_low) else "high") + f"\n{tau:.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel(scale, fontsize=9)
    fig.suptitle("Chips of the locations with the lowest and highest CATE, per scale", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
