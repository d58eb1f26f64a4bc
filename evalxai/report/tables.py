"""The tidy schema and per-run summaries (mean, standard deviation, percentile-bootstrap 95 % interval, n)."""
from __future__ import annotations

import numpy as np
import pandas as pd

TIDY_COLUMNS = ["run_id", "experiment", "dataset", "model", "model_accuracy", "method", "metric", "measure",
                "score_space", "direction", "sample", "dataset_index", "target", "step", "fraction", "value", "seed"]


# The measures a reader looks at first: (metric, measure), in display order (summary plot, reports).
SUMMARY_PANELS = [("pixel_flipping", "aopc_morf"), ("pixel_flipping", "abpc"), ("selectivity", "auc"),
                  ("continuity", "continuity_ref"), ("randomization", "spearman_abs_full"),
                  ("conservation", "abs_relative_residual"), ("sparseness", "gini"),
                  ("insertion_deletion", "auc_insertion"), ("road", "road_combined")]


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a summary or leaderboard table that belong to the headline measures (all rows if none do)."""
    keys = pd.DataFrame(SUMMARY_PANELS, columns=["metric", "measure"])
    sub = table.merge(keys, on=["metric", "measure"]) if not table.empty else table
    return table if sub.empty else sub


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (vectorised resampling)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (np.nan, np.nan)
    if len(v) == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(min(lo, v.mean())), float(max(hi, v.mean()))


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
