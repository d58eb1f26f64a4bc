"""Leaderboard statistics: ranking with cluster-bootstrap intervals and paired comparisons over the same images.

For every (dataset, model, metric, measure) with a direction, methods are ranked by their mean over all
(seed, image) observations. The seeds of a sweep score the same test images, so observations of one image are
not independent: the 95 % interval is a cluster bootstrap that resamples images (``dataset_index``) with all
their seeds (Davison & Hinkley 1997; Field & Welsh 2007). Each method is compared with the best method and with
the controls (``random``, ``edge``) by the Wilcoxon signed-rank test paired by image (each method's values
averaged over seeds per image, on the images both have), and the p-values of one (dataset, model, metric,
measure) family are Holm-corrected (Holm 1979).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from evalxai.report.tables import cluster_bootstrap_ci

CONTROLS = ("random", "edge")
GROUP = ["dataset", "model", "metric", "measure"]
OBS = ["seed", "dataset_index"]  # one observation
IMAGE = "dataset_index"  # the cluster and the pairing unit
ALPHA = 0.05


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired values (NaN if fewer than 2 non-zero differences)."""
    from scipy.stats import wilcoxon  # lazy: scipy.stats takes about a second to import, only the tests need it

    d = a - b
    d = d[np.isfinite(d)]
    if np.count_nonzero(d) < 2:
        return np.nan
    return float(wilcoxon(d, zero_method="wilcox").pvalue)


def _better(mean_a: float, mean_b: float, direction: str) -> bool:
    return mean_a > mean_b if direction == "higher" else mean_a < mean_b


def rank_methods(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, model, metric, measure, method) of the scalar rows: mean and std over the (seed,
    image) observations, cluster-bootstrap 95 % CI over images, n (observations), n_images, runs, model accuracy,
    rank (1 = best, by direction), and Holm-corrected image-paired Wilcoxon p-values against the best method and
    the controls, with ``worse_than_best`` / ``beats_*`` flags at 0.05."""
    scal = scores[scores["step"].isna() & scores["direction"].isin(["higher", "lower"])].copy()
    if scal.empty:
        return pd.DataFrame(columns=["method", "metric", "measure", "direction", "mean", "ci_low", "ci_high", "n",
                                     "n_images", "rank"])
    for col in ("dataset", "model", "seed", "dataset_index"):
        if col not in scal:
            scal[col] = 0
    scal["dataset_index"] = scal["dataset_index"].fillna(scal["sample"])
    rows = []
    for key, g in scal.groupby(GROUP, sort=True, dropna=False):
        direction = g["direction"].iloc[0]
        per = {m: v.groupby(OBS)["value"].mean() for m, v in g.groupby("method")}
        per_image = {m: v.groupby(level=IMAGE).mean() for m, v in per.items()}  # paired tests: mean over seeds
        stats = []
        for method, v in per.items():
            vals = v.to_numpy()
            images = v.index.get_level_values(IMAGE).to_numpy()
            lo, hi = cluster_bootstrap_ci(vals, images, seed=seed)
            sub = g[g["method"] == method]
            stats.append({**dict(zip(GROUP, key)), "method": method, "direction": direction,
                          "mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan,
                          "std": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else np.nan,
                          "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(vals).sum()),
                          "n_images": int(pd.unique(images[np.isfinite(vals)]).size),
                          "runs": int(sub["run_id"].nunique()) if "run_id" in sub else 1,
                          "model_accuracy": float(sub["model_accuracy"].mean()) if "model_accuracy" in sub else np.nan})
        table = pd.DataFrame(stats)
        table["rank"] = table["mean"].rank(ascending=(direction == "lower"), method="min").astype("Int64")
        best = table.sort_values("rank").iloc[0]["method"]
        table["best"] = best
        comparisons = {"best": best, **{c: c for c in CONTROLS if c in per_image}}
        pcols = []
        for name, ref in comparisons.items():
            col = f"p_vs_{name}"
            pvals = []
            for method in table["method"]:
                if method == ref:
                    pvals.append(np.nan)
                    continue
                joined = pd.concat([per_image[method], per_image[ref]], axis=1, join="inner").to_numpy()
                pvals.append(wilcoxon_p(joined[:, 0], joined[:, 1]))
            table[col] = pvals
            pcols.append(col)
        flat = holm(table[pcols].to_numpy().ravel()).reshape(len(table), len(pcols))
        ref_mean = dict(zip(table["method"], table["mean"]))
        for j, col in enumerate(pcols):
            table[f"{col}_holm"] = flat[:, j]
            name = col.removeprefix("p_vs_")
            sig = flat[:, j] < ALPHA
            if name == "best":
                table["worse_than_best"] = sig
            else:
                table[f"beats_{name}"] = sig & np.array([_better(m, ref_mean[comparisons[name]], direction)
                                                          for m in table["mean"]])
        rows.append(table)
    out = pd.concat(rows, ignore_index=True)
    front = ["dataset", "model", "metric", "measure", "method", "direction", "mean", "std", "ci_low", "ci_high", "n",
             "n_images", "rank", "runs", "model_accuracy"]
    return out[front + [c for c in out.columns if c not in front]].sort_values(
        ["dataset", "model", "metric", "measure", "rank"], ignore_index=True)
