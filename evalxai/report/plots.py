"""Plots of one run: heatmap grid, pixel-flipping curves with interval bands, summary bars with intervals."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from evalxai._io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def heatmap_grid(images: np.ndarray, maps: dict[str, np.ndarray], path: Path, n: int = 4) -> Path:
    """Rows: samples; columns: the input then each method's map (bwr, symmetric around 0 per map)."""
    n = min(n, len(images))
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.35 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].sum(0), cmap="gray")
        for j, (name, m) in enumerate(maps.items(), start=1):
            r = m[i].sum(0)
            v = np.abs(r).max() or 1.0
            axes[i, j].imshow(r, cmap="bwr", vmin=-v, vmax=v)
            if i == 0:
                axes[i, j].set_title(name.replace("lrp_", "").replace("_", "\n"), fontsize=6)
    axes[0, 0].set_title("input", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Attributions (red: for the target class, blue: against)", fontsize=8)
    return _save(fig, path)


def flipping_curves(scores: pd.DataFrame, path: Path) -> Path | None:
    """Mean pixel-flipping curve per method with a 95 % normal band, one panel per order."""
    curves = scores[(scores["metric"] == "pixel_flipping") & scores["measure"].str.startswith("curve_")]
    if curves.empty:
        return None
    orders = sorted(curves["measure"].unique())
    fig, axes = plt.subplots(1, len(orders), figsize=(5.2 * len(orders), 4), squeeze=False)
    methods = sorted(curves["method"].unique())
    colors = dict(zip(methods, plt.get_cmap("tab20")(np.linspace(0, 1, max(len(methods), 2)))))
    for ax, measure in zip(axes[0], orders):
        sub = curves[curves["measure"] == measure]
        for method, g in sub.groupby("method"):
            stats = g.groupby("fraction")["value"].agg(["mean", "std", "count"])
            half = 1.96 * stats["std"].fillna(0) / np.sqrt(stats["count"])
            ax.plot(stats.index, stats["mean"], label=method, lw=1.2, color=colors[method])
            ax.fill_between(stats.index, stats["mean"] - half, stats["mean"] + half, alpha=0.15, color=colors[method])
        ax.set_title(measure.replace("curve_", "").upper() + " removal")
        ax.set_xlabel("fraction of features removed")
        ax.set_ylabel(f"target score ({sub['score_space'].iloc[0]})")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def summary_bars(summary: pd.DataFrame, path: Path, measures: list[str] | None = None) -> Path | None:
    """Horizontal bars of per-method means with their bootstrap intervals, one panel per measure."""
    if summary.empty:
        return None
    chosen = measures or [m for m in ("aopc_morf", "abpc", "abs_relative_residual", "gini")
                          if m in set(summary["measure"])]
    chosen = [m for m in chosen if m in set(summary["measure"])]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 0.28 * summary["method"].nunique() + 1.6),
                             squeeze=False)
    for ax, measure in zip(axes[0], chosen):
        s = summary[summary["measure"] == measure]
        direction = s["direction"].iloc[0]
        s = s.sort_values("mean", ascending=(direction == "lower"))
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
        ax.barh(s["method"], s["mean"], xerr=err, color="tab:blue", alpha=0.75, capsize=2)
        ax.invert_yaxis()
        ax.set_title(f"{measure} ({direction} is better)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
