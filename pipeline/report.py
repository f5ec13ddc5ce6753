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
