"""The tidy schema and per-run summaries (mean, standard deviation, percentile-bootstrap 95 % interval, n)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TIDY_COLUMNS = ["run_id", "experiment", "dataset", "model", "model_accuracy", "method", "metric", "measure",
                "score_space", "direction", "sample", "dataset_index", "target", "step", "fraction", "value", "seed"]


# The measures a reader looks at first: (metric, measure), in display order (summary plot, reports).
SUMMARY_PANELS = [("pixel_flipping", "aopc_morf"), ("pixel_flipping", "abpc"), ("selectivity", "auc"),
                  ("continuity", "continuity_ref"), ("randomization", "spearman_abs_full"),
                  ("conservation", "abs_relative_residual"), ("sparseness", "gini"),
                  ("insertion_deletion", "auc_insertion"), ("road", "road_combined"),
                  # text (token ids)
                  ("token_flipping", "abpc"), ("comprehensiveness", "comprehensiveness"),
                  ("eraser_sufficiency", "sufficiency"), ("token_f1", "f1"),
                  ("relevance_mass_accuracy", "ratio")]


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a summary or leaderboard table that belong to the headline measures (all rows if none do)."""
    keys = pd.DataFrame(SUMMARY_PANELS, columns=["metric", "measure"])
    sub = table.merge(keys, on=["metric", "measure"]) if not table.empty else table
    return table if sub.empty else sub


def cluster_bootstrap_ci(values: Sequence[float] | np.ndarray, clusters: Sequence | np.ndarray | None = None,
                         n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile cluster-bootstrap interval of the mean (Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007).

    Clusters (e.g. images seen under several seeds) are resampled with replacement; a replicate's statistic is
    the mean of all observations of the drawn clusters (weighted by their counts). ``clusters=None``: every
    observation is its own cluster (the plain bootstrap). Non-finite values are dropped; the interval always
    contains the mean of the remaining observations. Vectorised: one ``(n_boot, n_clusters)`` draw.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = np.isfinite(v)
    if clusters is None:
        codes = np.arange(ok.sum())
    else:
        c = np.asarray(clusters).ravel()
        if len(c) != len(v):
            raise ValueError(f"clusters has {len(c)} entries, values {len(v)}")
        codes = pd.factorize(c[ok])[0]  # first-appearance order, so singleton clusters keep the values' order
        missing = codes < 0  # a missing cluster label: its own cluster
        codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    v = v[ok]
    if len(v) == 0:
        return (np.nan, np.nan)
    mean = v.mean()
    k = codes.max() + 1
    if k == 1:
        return (float(mean), float(mean))
    sums = np.bincount(codes, weights=v, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(min(lo, mean)), float(max(hi, mean))


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of independent values (the one-per-cluster case of
    :func:`cluster_bootstrap_ci`)."""
    return cluster_bootstrap_ci(values, None, n_boot=n_boot, level=level, seed=seed)


def summarize(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per method x metric x measure (scalar rows only): mean, std, ci_low, ci_high, n, direction."""
    scalars = scores[scores["step"].isna()]
    rows = []
    for (method, metric, measure), g in scalars.groupby(["method", "metric", "measure"], sort=True):
        lo, hi = bootstrap_ci(g["value"].to_numpy(), seed=seed)
        rows.append({"method": method, "metric": metric, "measure": measure,
                     "direction": g["direction"].iloc[0], "mean": g["value"].mean(), "std": g["value"].std(ddof=1),
                     "ci_low": lo, "ci_high": hi, "n": int(g["value"].notna().sum())})
    return pd.DataFrame(rows, columns=["method", "metric", "measure", "direction", "mean", "std", "ci_low", "ci_high",
                                       "n"])
