"""Plots of one run: heatmap grid, pixel-flipping curves with interval bands, summary bars with intervals."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from evalxai.core.files import atomic_path  # noqa: E402
from evalxai.report.tables import SUMMARY_PANELS  # noqa: E402


def _save(fig, path: Path, tight: bool = True) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight" if tight else None, format="png")
    plt.close(fig)
    return path


def heatmap_grid(images: np.ndarray, maps: dict[str, np.ndarray], path: Path, n: int = 4,
                 labels: list[str] | None = None) -> Path:
    """Rows: samples; columns: the input (in pixel space: RGB images in colour) then each method's map (bwr,
    symmetric around 0 per map); ``labels``: the explained class of each row.

    The tiles are coloured in numpy and drawn as one mosaic image (one axes instead of one per tile: 4x faster
    for 17 methods), with the column titles as figure text."""
    n = min(n, len(images))
    cols = 1 + len(maps)
    h, w = images.shape[-2:]
    gap = max(1, h // 14)
    mosaic = np.ones((n * (h + gap) - gap, cols * (w + gap) - gap, 4))
    gray, bwr = matplotlib.colormaps["gray"], matplotlib.colormaps["bwr"]
    for i in range(n):
        if images.shape[1] == 3:
            tiles = [np.concatenate([np.clip(images[i].transpose(1, 2, 0), 0, 1), np.ones((h, w, 1))], -1)]
        else:
            img = images[i].sum(0)
            span = float(img.max() - img.min()) or 1.0
            tiles = [gray((img - img.min()) / span)]
        for m in maps.values():
            r = m[i].sum(0)
            v = float(np.abs(r).max()) or 1.0
            tiles.append(bwr((r / v + 1) / 2))
        for j, tile in enumerate(tiles):
            mosaic[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    top = 0.6 / (1.0 * n + 0.6)
    fig = plt.figure(figsize=(1.0 * cols, 1.0 * n + 0.6))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - top))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for i, label in enumerate((labels or [])[:n]):  # the explained class, at the left of each row
        fig.text(0.005, 0.01 + (0.98 - top) * (1 - (i + 0.5) / n), str(label)[:12], fontsize=5, rotation=90,
                 ha="left", va="center")
    for j, name in enumerate(["input", *maps]):
        label = name if j == 0 else name.replace("lrp_", "").replace("_", "\n")
        fig.text(0.01 + 0.98 * (j + 0.5) / cols, 0.99 - top, label, fontsize=6, ha="center", va="bottom")
    fig.suptitle("Attributions (red: for the target class, blue: against)", fontsize=8)
    return _save(fig, path, tight=False)


def on_common_fractions(curves: pd.DataFrame, points: int = 21) -> pd.DataFrame:
    """Curve rows (sample, fraction, value) on fractions every sample has: as they are when all samples share their
    fractions (images of one size), else each sample's curve linearly interpolated at ``points`` even fractions of
    [0, 1] (sequences of different lengths remove different fractions per step)."""
    per_sample = curves.groupby("sample")["fraction"].apply(lambda f: tuple(np.sort(f.to_numpy(dtype=float))))
    if per_sample.nunique() <= 1:
        return curves
    grid = np.linspace(0.0, 1.0, points)
    parts = []
    for sample, g in curves.groupby("sample"):
        g = g.sort_values("fraction")
        values = np.interp(grid, g["fraction"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float))
        parts.append(pd.DataFrame({"sample": sample, "fraction": grid, "value": values}))
    return pd.concat(parts, ignore_index=True)


def flipping_curves(scores: pd.DataFrame, path: Path, metric: str = "pixel_flipping") -> Path | None:
    """Mean perturbation curve per method of ``metric`` (``pixel_flipping``, ``token_flipping``) with a 95 % normal
    band, one panel per order."""
    curves = scores[(scores["metric"] == metric) & scores["measure"].str.startswith("curve_")]
    if curves.empty:
        return None
    orders = sorted(curves["measure"].unique())
    fig, axes = plt.subplots(1, len(orders), figsize=(5.2 * len(orders), 4), squeeze=False)
    methods = sorted(curves["method"].unique())
    colors = dict(zip(methods, plt.get_cmap("tab20")(np.linspace(0, 1, max(len(methods), 2)))))
    for ax, measure in zip(axes[0], orders):
        sub = curves[curves["measure"] == measure]
        for method, g in sub.groupby("method"):
            stats = on_common_fractions(g).groupby("fraction")["value"].agg(["mean", "std", "count"])
            half = 1.96 * stats["std"].fillna(0) / np.sqrt(stats["count"])
            ax.plot(stats.index, stats["mean"], label=method, lw=1.2, color=colors[method])
            ax.fill_between(stats.index, stats["mean"] - half, stats["mean"] + half, alpha=0.15, color=colors[method])
        ax.set_title(measure.replace("curve_", "").upper() + " removal")
        ax.set_xlabel("fraction of features removed")
        ax.set_ylabel(f"target score ({sub['score_space'].iloc[0]})")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.subplots_adjust(left=0.07, right=0.84, bottom=0.12, top=0.92, wspace=0.22)
    return _save(fig, path, tight=False)


def summary_bars(summary: pd.DataFrame, path: Path, panels: list[tuple[str, str]] | None = None) -> Path | None:
    """Horizontal bars of per-method means with their bootstrap intervals, one panel per (metric, measure)."""
    if summary.empty:
        return None
    have = set(zip(summary["metric"], summary["measure"]))
    chosen = [p for p in (panels or SUMMARY_PANELS) if tuple(p) in have]
    if not chosen:
        return None
    cols = min(4, len(chosen))
    rows = -(-len(chosen) // cols)
    height = 0.22 * summary["method"].nunique() + 1.2
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, height * rows), squeeze=False)
    for ax, (metric, measure) in zip(axes.flat, chosen):
        s = summary[(summary["metric"] == metric) & (summary["measure"] == measure)]
        direction = s["direction"].iloc[0]
        s = s.sort_values("mean", ascending=(direction == "lower"))
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
        ax.barh(s["method"], s["mean"], xerr=err, color="tab:blue", alpha=0.75, capsize=2)
        ax.invert_yaxis()
        title = measure if measure.startswith(metric.split("_")[0]) else f"{metric}: {measure}"
        ax.set_title(f"{title}\n({direction} is better, best on top)", fontsize=8)
        ax.tick_params(axis="y", labelsize=6)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.05, top=0.93, wspace=0.95, hspace=0.35)
    return _save(fig, path, tight=False)


def continuity_curves(scores: pd.DataFrame, path: Path, sample: int | None = None, max_methods: int = 8) -> Path | None:
    """Montavon 2018, Fig. 9 style: relevance in the four image quadrants along the translation path, one panel
    per method, for one sample (default: the first), with the target score on a second axis."""
    rows = scores[(scores["metric"] == "continuity") & scores["step"].notna()]
    if rows.empty:
        return None
    sample = int(rows["sample"].min()) if sample is None else sample
    rows = rows[rows["sample"] == sample]
    methods = list(dict.fromkeys(rows["method"]))[:max_methods]
    cols = min(4, len(methods))
    nrows = -(-len(methods) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.7 * nrows), squeeze=False)
    names = {"quadrant_1": "top-left", "quadrant_2": "top-right", "quadrant_3": "bottom-left",
             "quadrant_4": "bottom-right"}
    for ax, method in zip(axes.flat, methods):
        g = rows[rows["method"] == method]
        for q, label in names.items():
            c = g[g["measure"] == q].sort_values("step")
            ax.plot(c["step"].astype(float), c["value"], label=label, lw=1.3)
        s = g[g["measure"] == "score"].sort_values("step")
        twin = ax.twinx()
        twin.plot(s["step"].astype(float), s["value"], color="black", ls="--", lw=1, label="score")
        twin.tick_params(labelsize=6)
        ax.set_title(method, fontsize=8)
        ax.set_xlabel("horizontal shift (px)", fontsize=7)
        ax.set_ylabel("relevance in quadrant", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle(f"Continuity: quadrant relevance along the translation path (sample {sample}; dashed: score)",
                 fontsize=9)
    # fixed margins: tight_layout measures every tick label of every (twin) axis, >1 s for 8 panels
    fig.subplots_adjust(left=0.07, right=0.95, bottom=0.5 / (2.7 * nrows), top=1 - 0.55 / (2.7 * nrows),
                        wspace=0.55, hspace=0.6)
    return _save(fig, path, tight=False)
