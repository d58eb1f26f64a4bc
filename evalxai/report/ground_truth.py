"""Which metrics agree with ground truth? ``python -m evalxai.report.ground_truth DIR``.

Reads every run below DIR (a sweep of ``experiment=ground_truth`` / ``ground_truth_decoy``: one dataset setting and
model per run, every method scored by localisation metrics against the dataset's masks and by the other metrics).

1. Localisation ranking: per method, the mean over runs of its mean localisation scores, and in how many runs it
   beats the ``random`` and ``edge`` controls (paired Wilcoxon signed-rank test over the run's images, p < 0.05,
   in the metric's direction; XAI-TRIS, Clark et al. 2024, found that many methods do not).
2. Agreement with ground truth: for every scalar measure m of every metric and each run, Spearman's rank
   correlation across the run's methods between m's per-method means, oriented so that higher is better (``lower``
   measures negated), and the reference localisation accuracy (``relevance_mass_accuracy``, Arras et al. 2022, by
   default). rho > 0: the metric ranks methods as the ground truth does. Reported: the mean of rho over runs with a
   95 % percentile-bootstrap interval over runs, the share of runs with rho > 0, and rho pooled over every
   (run, method) point after removing each run's mean (``rho_pooled``).

Runs whose model is near chance (test accuracy below ``--min-accuracy``, default 0.6) are listed but left out of
both analyses: a model that learnt nothing has no class-relevant pixels for a map to find.

Writes ``ground_truth_methods.csv``, ``ground_truth_agreement.csv``, ``ground_truth_per_run.csv``,
``ground_truth.md`` and ``ground_truth.png`` into DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from evalxai.core.files import atomic_path, write_text
from evalxai.metrics import METRICS
from evalxai.metrics.registry import FAMILIES
from evalxai.report.runs import gather
from evalxai.report.stats import wilcoxon_p

REFERENCE = "relevance_mass_accuracy:ratio"
MIN_ACCURACY = 0.6
CONTROLS = ("random", "edge")
# the report's groups: localisation (the reference's family) first, then the registry's order
FAMILY_ORDER = ("localisation", *(f for f in FAMILIES if f != "localisation"))


def estimator(metric: str, measure: str) -> str:
    """``metric:measure``, how a scalar measure is named here (the reference is ``relevance_mass_accuracy:ratio``)."""
    return f"{metric}:{measure}"


def setting_of(run: dict) -> str:
    """A run's data setting: ``xai_tris/<scenario>/<background>`` or ``decoy_mnist/<mask>`` (else the name)."""
    d = {**dict((run.get("config") or {}).get("dataset") or {}), **dict(run.get("dataset") or {}),
         **dict(((run.get("ground_truth") or {}).get("mask_meta")) or {})}  # run.json: the loader's own record
    name = d.get("name", "?")
    if name == "xai_tris":
        return f"xai_tris/{d.get('scenario')}/{d.get('background')}/{d.get('size', 8)}"
    if name == "decoy_mnist":
        return f"decoy_mnist/{d.get('mask')}"
    return str(name)


def scalar_table(scores: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """Per-image scalar values with ``estimator``, ``family``, ``setting`` and ``orientation`` (+1 higher is
    better, -1 lower): rows of measures with a direction, no curve steps."""
    sc = scores[scores["step"].isna() & scores["direction"].isin(["higher", "lower"])].copy()
    settings = {r.get("run_id"): setting_of(r) for r in runs}
    sc["setting"] = sc["run_id"].map(settings).fillna(sc["dataset"])
    sc["estimator"] = sc["metric"].astype(str) + ":" + sc["measure"].astype(str)
    sc["family"] = sc["metric"].map({name: spec.family for name, spec in METRICS.items()}).fillna("other")
    sc["value"] = sc["value"].astype(np.float64)
    sc["sign"] = np.where(sc["direction"] == "higher", 1.0, -1.0)
    return sc


def method_means(sc: pd.DataFrame) -> pd.DataFrame:
    """Mean over images per (run, setting, model, estimator, method), oriented (higher = better) in ``oriented``."""
    keys = ["run_id", "setting", "model", "family", "estimator", "method"]
    out = sc.groupby(keys, dropna=False).agg(value=("value", "mean"), sign=("sign", "first")).reset_index()
    out["oriented"] = out["value"] * out["sign"]
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return np.nan
    ra, rb = pd.Series(a[ok]).rank().to_numpy(), pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return np.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def per_run_correlations(means: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Spearman rho across methods, per run and estimator, with the reference localisation measure."""
    wide = means.pivot_table(index=["run_id", "setting", "model", "method"], columns="estimator", values="oriented")
    if reference not in wide:
        raise ValueError(f"no '{reference}' scores below this folder: the reference needs that localisation metric "
                         "in the runs (experiment=ground_truth has it), or choose another with --reference")
    family = means.groupby("estimator")["family"].first()
    rows = []
    for (run, setting, model), g in wide.groupby(level=["run_id", "setting", "model"]):
        ref = g[reference].to_numpy()
        for est in wide.columns:
            if est == reference:
                continue
            rows.append({"run_id": run, "setting": setting, "model": model, "estimator": est,
                         "family": family[est], "rho": _spearman(g[est].to_numpy(), ref),
                         "n_methods": int(np.isfinite(g[est].to_numpy()).sum())})
    return pd.DataFrame(rows)


def _centred_pooled(means: pd.DataFrame, est: str, reference: str) -> float:
    """rho over every (run, method) point after subtracting each run's mean of both variables."""
    wide = means[means["estimator"].isin([est, reference])].pivot_table(
        index=["run_id", "method"], columns="estimator", values="oriented")
    if est not in wide or reference not in wide:
        return np.nan
    wide = wide.dropna()
    centred = wide - wide.groupby(level="run_id").transform("mean")
    return _spearman(centred[est].to_numpy(), centred[reference].to_numpy())


def agreement(means: pd.DataFrame, reference: str = REFERENCE, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per estimator: mean rho over runs [bootstrap interval over runs], share of runs with rho > 0,
    pooled rho, number of runs; sorted by family, then mean rho (best agreement first)."""
    per_run = per_run_correlations(means, reference)
    rng = np.random.default_rng(seed)
    rows = []
    for (est, family), g in per_run.groupby(["estimator", "family"]):
        r = g["rho"].dropna().to_numpy()
        if len(r):
            boot = rng.choice(r, size=(n_boot, len(r)), replace=True).mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
        else:
            lo = hi = np.nan
        rows.append({"family": family, "estimator": est, "rho_mean": r.mean() if len(r) else np.nan,
                     "ci_low": lo, "ci_high": hi, "share_positive": (r > 0).mean() if len(r) else np.nan,
                     "rho_pooled": _centred_pooled(means, est, reference), "runs": len(r)})
    order = {f: i for i, f in enumerate([*FAMILY_ORDER, "other"])}
    out = pd.DataFrame(rows)
    out["_f"] = out["family"].map(order)
    return out.sort_values(["_f", "rho_mean"], ascending=[True, False]).drop(columns="_f").reset_index(drop=True)


def control_tests(sc: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Per run and method: does it beat each control on the reference measure? Paired two-sided Wilcoxon over the
    run's images, p < 0.05 and better in the measure's direction."""
    ref = sc[sc["estimator"] == reference]
    rows = []
    for run, g in ref.groupby("run_id"):
        wide = g.pivot_table(index="dataset_index", columns="method", values="value")
        sign = float(g["sign"].iloc[0])
        for method in wide.columns:
            row = {"run_id": run, "method": method}
            for c in CONTROLS:
                if c not in wide or c == method:
                    row[f"beats_{c}"] = np.nan
                    continue
                both = wide[[method, c]].dropna()
                diff = sign * (both[method] - both[c]).mean() if len(both) else np.nan
                p = wilcoxon_p(both[method].to_numpy(), both[c].to_numpy()) if len(both) > 1 else np.nan
                row[f"beats_{c}"] = float(bool(diff > 0 and p < 0.05))
            rows.append(row)
    return pd.DataFrame(rows)


def method_ranking(means: pd.DataFrame, sc: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Methods by the reference localisation measure (mean over runs of the per-run means), with every localisation
    measure's mean and the number of runs in which the method beats each control."""
    loc = means[means["family"] == "localisation"]
    table = loc.pivot_table(index="method", columns="estimator", values="value", aggfunc="mean")
    tests = control_tests(sc, reference)
    runs = means.groupby("method")["run_id"].nunique().rename("runs")
    table = table.join(runs)
    if not tests.empty:
        for c in CONTROLS:
            table[f"beats_{c}"] = tests.groupby("method")[f"beats_{c}"].sum(min_count=1).round().astype("Int64")
    ref_cols = [reference] + [c for c in table.columns if c != reference]
    table = table[ref_cols].sort_values(reference, ascending=False)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index()


def plot(agree: pd.DataFrame, path: Path, reference: str = REFERENCE) -> Path | None:
    """Horizontal bars of mean rho with intervals per estimator, grouped and coloured by family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = agree[agree["family"] != "localisation"].dropna(subset=["rho_mean"])
    if data.empty:
        return None
    colours = {"faithfulness": "#1f77b4", "robustness": "#d62728", "complexity": "#2ca02c", "axiomatic": "#9467bd",
               "randomisation": "#8c564b", "other": "#7f7f7f"}
    data = data.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.24 * len(data) + 1.4))
    y = np.arange(len(data))
    err = np.vstack([data["rho_mean"] - data["ci_low"], data["ci_high"] - data["rho_mean"]])
    ax.barh(y, data["rho_mean"], xerr=np.nan_to_num(err), color=[colours.get(f, "#7f7f7f") for f in data["family"]],
            error_kw={"lw": 0.8, "capsize": 2})
    ax.set_yticks(y, data["estimator"], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel(f"Spearman rho with {reference} across methods (mean over runs, 95 % CI)", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[f]) for f in colours if f in set(data["family"])]
    ax.legend(handles, [f for f in colours if f in set(data["family"])], fontsize=7, loc="lower right")
    ax.set_title("Which metrics agree with ground truth?", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def build(root: str | Path, reference: str = REFERENCE, seed: int = 0,
          min_accuracy: float = MIN_ACCURACY) -> dict[str, pd.DataFrame]:
    """Write the ground-truth report files into ``root``; returns the tables."""
    root = Path(root)
    scores, runs = gather(root)
    accuracy = pd.DataFrame([{"setting": setting_of(r), "model": (r.get("model") or {}).get("label")
                              or ((r.get("config") or {}).get("model") or {}).get("name"),
                              "test_accuracy": (r.get("model") or {}).get("test_accuracy"), "run_id": r.get("run_id")}
                             for r in runs])
    accuracy["used"] = accuracy["test_accuracy"].fillna(1.0) >= min_accuracy
    scores = scores[scores["run_id"].isin(set(accuracy.loc[accuracy["used"], "run_id"]))]
    if scores.empty:
        raise ValueError(f"every run below '{root}' has a model below --min-accuracy={min_accuracy}")
    sc = scalar_table(scores, runs)
    means = method_means(sc)
    agree = agreement(means, reference, seed=seed)
    ranking = method_ranking(means, sc, reference)
    per_run = per_run_correlations(means, reference)
    for name, df in (("ground_truth_methods.csv", ranking), ("ground_truth_agreement.csv", agree),
                     ("ground_truth_per_run.csv", per_run)):
        with atomic_path(root / name) as tmp:
            df.to_csv(tmp, index=False)
    png = plot(agree, root / "ground_truth.png", reference)
    n_runs = sc["run_id"].nunique()
    text = ["# Which metrics agree with ground truth?\n",
            f"{n_runs} runs below `{root}` (settings x models), {sc['method'].nunique()} methods. Reference: "
            f"`{reference}`; rho = Spearman correlation across a run's methods between a measure (oriented: higher "
            "= better) and the reference; mean over runs [95 % bootstrap interval over runs], share of runs with "
            "rho > 0, and rho pooled over (run, method) points after centring each run.\n",
            f"## Models (runs with test accuracy < {min_accuracy} are not used)\n",
            _md(accuracy.drop(columns="run_id").sort_values(["setting", "model"])), "",
            "## Methods ranked by localisation (mean over runs)\n",
            f"`beats_random` / `beats_edge`: runs (of `runs`) in which the method's `{reference}` is better than the "
            "control's (paired Wilcoxon over the run's images, p < 0.05).\n", _md(ranking), "",
            "## Agreement of each measure with the reference\n", _md(agree), ""]
    if png is not None:
        text.append(f"![agreement]({png.name})\n")
    write_text(root / "ground_truth.md", "\n".join(text))
    return {"methods": ranking, "agreement": agree, "per_run": per_run, "accuracy": accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalxai.report.ground_truth", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder holding the runs (e.g. results/ground_truth/multirun)")
    parser.add_argument("--reference", default=REFERENCE, help=f"metric:measure of localisation (default {REFERENCE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY,
                        help=f"leave out runs whose model's test accuracy is below this (default {MIN_ACCURACY})")
    args = parser.parse_args(argv)
    try:
        tables = build(args.root, args.reference, args.seed, args.min_accuracy)
    except (FileNotFoundError, ValueError) as err:
        print(f"evalxai.report.ground_truth: error: {err}", file=sys.stderr)
        return 1
    print(f"{len(tables['agreement'])} measures compared with {args.reference}; wrote ground_truth.md, "
          f"ground_truth.png and CSV files into {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
