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
