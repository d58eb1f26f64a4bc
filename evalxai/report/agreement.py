"""Agreement between metrics: do two metrics rank the methods the same way? (the disagreement problem, Krishna et
al. 2022, "The Disagreement Problem in Explainable Machine Learning").

Every scalar measure with a direction is one estimator, oriented so that larger is better (``lower`` measures
negated). For each pair of estimators, Kendall's tau-b between their rankings of the methods:
- ``tau``: between the methods' mean scores (over images; in a sweep, an image's seeds are averaged first);
- ``tau_sample``: per image, between the methods' scores on that image, averaged over the images.
The 95 % intervals resample images (percentile bootstrap). Tau-b of two score vectors u, v over K methods is
sum_{i<j} sign(u_j - u_i) sign(v_j - v_i) / sqrt(n_u n_v), with n_u the pairs that u does not tie.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from evalxai.core.files import atomic_path

GROUP = ["dataset", "model"]
IMAGE = "dataset_index"


def label(metric: str, measure: str) -> str:
    """How an estimator is named in tables: ``metric:measure`` (the metric alone when the two agree)."""
    return metric if measure == metric else f"{metric}:{measure}"


def oriented(scores: pd.DataFrame) -> dict:
    """(dataset, model) -> {estimator label: DataFrame images x methods} of oriented scores (higher = better),
    averaged over seeds per image; methods and images are those of the group (NaN where an estimator lacks one)."""
    sc = scores[scores["step"].isna() & scores["direction"].isin(["higher", "lower"])].copy()
    if sc.empty:
        return {}
    for col in GROUP:
        if col not in sc:
            sc[col] = "-"
    if IMAGE not in sc:
        sc[IMAGE] = sc["sample"]
    sc[IMAGE] = sc[IMAGE].fillna(sc["sample"])
    sc["value"] = sc["value"].astype(np.float64).where(sc["direction"] == "higher", -sc["value"].astype(np.float64))
    out = {}
    for key, g in sc.groupby(GROUP, sort=True, dropna=False):
        methods = sorted(g["method"].unique())
        images = np.sort(g[IMAGE].unique())
        per = g.groupby(["metric", "measure", IMAGE, "method"])["value"].mean()
        ests = {}
        for (metric, measure), s in per.groupby(level=[0, 1], sort=True):
            table = s.droplevel([0, 1]).unstack("method").reindex(index=images, columns=methods)
            ests[label(metric, measure)] = table
        out[key] = ests
    return out


def _pair_signs(m: np.ndarray) -> np.ndarray:
    """sign(m[..., j] - m[..., i]) for every method pair i < j: (..., K (K - 1) / 2); NaN where either is NaN."""
    i, j = np.triu_indices(m.shape[-1], 1)
    return np.sign(m[..., j] - m[..., i])


def _tau(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b along the last axis of two pair-sign arrays (NaN if either is all ties or has a NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _nanmean_w(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weighted nan-mean of the columns of v (N, ...) with bootstrap counts w (B, N) -> (B, ...)."""
    ok = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.tensordot(w, np.where(ok, v, 0.0), axes=(1, 0)) / np.tensordot(w, ok.astype(np.float64), axes=(1, 0))


def metric_agreement(scores: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, model, estimator a, estimator b), a != b (both orders): ``tau`` and ``tau_sample``
    with their bootstrap intervals (``*_low``, ``*_high``), ``n_images`` (images where both score every method)
    and ``n_methods``."""
    rows = []
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    for key, ests in oriented(scores).items():
        names = list(ests)
        if len(names) < 2:
            continue
        mats = np.stack([ests[e].to_numpy(np.float64) for e in names])  # (E, N, K)
        e, n, k = mats.shape
        if k < 2:
            continue
        w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(mats, axis=1)  # (E, K)
        signs = _pair_signs(means)  # (E, P)
        boot_means = np.stack([_nanmean_w(w, mats[i]) for i in range(e)])  # (E, B, K)
        boot_signs = _pair_signs(boot_means)  # (E, B, P)
        img_signs = _pair_signs(mats)  # (E, N, P)
        complete = np.isfinite(mats).all(-1)  # (E, N)
        for a in range(e):
            for b in range(e):
                if a == b:
                    continue
                tau = float(_tau(signs[a], signs[b]))
                boot = _tau(boot_signs[a], boot_signs[b])
                both = complete[a] & complete[b]
                per = np.where(both, _tau(np.nan_to_num(img_signs[a]), np.nan_to_num(img_signs[b])), np.nan)
                boot_per = _nanmean_w(w, per)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi = np.nanpercentile(boot, q) if np.isfinite(boot).any() else (np.nan, np.nan)
                    slo, shi = np.nanpercentile(boot_per, q) if np.isfinite(boot_per).any() else (np.nan, np.nan)
                    tau_sample = float(np.nanmean(per)) if np.isfinite(per).any() else np.nan
                rows.append({**dict(zip(GROUP, key)), "a": names[a], "b": names[b], "tau": tau, "tau_low": float(lo),
                             "tau_high": float(hi), "tau_sample": tau_sample, "tau_sample_low": float(slo),
                             "tau_sample_high": float(shi), "n_images": int(np.isfinite(per).sum()),
                             "n_methods": k})
    cols = [*GROUP, "a", "b", "tau", "tau_low", "tau_high", "tau_sample", "tau_sample_low", "tau_sample_high",
            "n_images", "n_methods"]
    return pd.DataFrame(rows, columns=cols)


def tau_matrix(table: pd.DataFrame, value: str = "tau") -> pd.DataFrame:
    """Square estimator x estimator matrix of ``value`` (1 on the diagonal) for one (dataset, model)."""
    names = sorted(set(table["a"]) | set(table["b"]))
    mat = table.pivot_table(index="a", columns="b", values=value, aggfunc="mean").reindex(index=names, columns=names)
    for name in names:
        mat.loc[name, name] = 1.0
    return mat


def disagreements(table: pd.DataFrame) -> pd.DataFrame:
    """Pairs (each once) whose rankings of the methods disagree (tau < 0), most negative first, with a flag for
    an interval entirely below 0."""
    sub = table[(table["a"] < table["b"]) & (table["tau"] < 0)].copy()
    sub["interval_below_0"] = sub["tau_high"] < 0
    return sub.sort_values("tau").reset_index(drop=True)


def heatmap(table: pd.DataFrame, path: str | Path, value: str = "tau", title: str | None = None) -> Path | None:
    """A heatmap of the tau matrix (one panel per (dataset, model)), diverging colours in [-1, 1]."""
    # lazy: matplotlib takes about a second to import, and the tau tables above are used without a picture
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.empty:
        return None
    groups = list(table.groupby(GROUP, sort=True))
    size = max(len(set(g["a"])) for _, g in groups)
    side = max(4.0, 0.38 * size + 2.0)
    fig, axes = plt.subplots(1, len(groups), figsize=(side * len(groups), side), squeeze=False)
    for ax, (key, g) in zip(axes[0], groups):
        mat = tau_matrix(g, value)
        im = ax.imshow(mat.to_numpy(np.float64), cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(len(mat)), mat.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(len(mat)), mat.index, fontsize=7)
        if len(mat) <= 16:
            for i in range(len(mat)):
                for j in range(len(mat)):
                    v = mat.iat[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if abs(v) > 0.6 else "black")
        ax.set_title(title or f"Kendall tau between metric rankings of methods ({'/'.join(map(str, key))})",
                     fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
