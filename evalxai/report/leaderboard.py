"""Leaderboard across runs: ``python -m evalxai.report.leaderboard DIR``.

Gathers every ``scores.parquet`` below DIR (one run, a sweep, several sweeps; ``report.runs.gather``), ranks the
methods per (dataset, model, metric, measure) with cluster-bootstrap intervals over images, tests them pairwise over
the same images (Wilcoxon signed-rank, Holm-corrected) against the best method and the controls
(``report.stats.rank_methods``), and writes ``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.png`` and
``report.md`` / ``report.html`` into DIR (``write_leaderboard``). Runs are pooled only where they differ in seed: a
model or dataset is its identity (run.json's ``model.identity``, ``dataset.fingerprint``), and one name with several
identities becomes several labels (``name@<8 characters of the identity>``).

It also says how far each ranking's metric can be trusted: when DIR holds meta-evaluations
(``python -m evalxai.meta``: ``meta.csv``), each metric is annotated with its meta-consistency MC (model and input
perturbation, mean ± spread) from the meta runs of the same model and dataset: meta runs are labelled together
with the score runs, by meta.json's identities, and MC is averaged only over the meta runs of one (dataset, model)
label. A meta run without identities (made before meta.json recorded them) is matched by name only where the score
runs of that name have one identity, else not at all. It also measures how much the metrics agree (Kendall tau
between their rankings of the methods, ``agreement.csv``, ``agreement.png``), listing the pairs that disagree
(tau < 0) in the markdown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from evalxai.core.files import atomic_path, write_text
from evalxai.report.agreement import disagreements, heatmap, metric_agreement
from evalxai.report.document import markdown_table, write_report
from evalxai.report.plots import summary_bars
from evalxai.report.runs import dataset_id, gather, model_id, read_meta_runs
from evalxai.report.stats import rank_methods
from evalxai.report.tables import headline

MC_COLUMNS = ("mc_model", "mc_model_std", "mc_input", "mc_input_std")
META_KEY = ["dataset", "model", "metric", "measure"]


def gather_meta(meta_runs: list[dict]) -> pd.DataFrame:
    """MC per (dataset, model, metric, measure) from the meta runs (``read_meta_runs``, labelled by ``gather``),
    averaged over the meta runs of one dataset label and one model label, i.e. of one identity: columns
    ``mc_model``, ``mc_model_std``, ``mc_input``, ``mc_input_std``, ``meta_runs``. Meta runs that match no label
    (``None``) are left out. Empty when there is none."""
    labels = [{col: m[f"{col}_label"] for col in ("model", "dataset") if f"{col}_label" in m} for m in meta_runs]
    tables = [m["table"].assign(**label, meta_run=m["path"]) for m, label in zip(meta_runs, labels)
              if None not in label.values()]
    if not tables:
        return pd.DataFrame(columns=[*META_KEY, *MC_COLUMNS, "meta_runs"])
    meta = pd.concat(tables, ignore_index=True)
    wide = meta.pivot_table(index=[*META_KEY, "meta_run"], columns="space", values=["MC", "MC_std"], aggfunc="mean")
    wide.columns = [f"mc_{space}" if v == "MC" else f"mc_{space}_std" for v, space in wide.columns]
    wide = wide.reset_index()
    out = wide.groupby(META_KEY, dropna=False).agg(
        **{c: (c, "mean") for c in MC_COLUMNS if c in wide}, meta_runs=("meta_run", "nunique")).reset_index()
    for c in MC_COLUMNS:
        if c not in out:
            out[c] = float("nan")
    return out[[*META_KEY, *MC_COLUMNS, "meta_runs"]]


def annotate_mc(board: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with each (dataset, model, metric, measure)'s MC columns (NaN where no meta run matches)."""
    if meta.empty or board.empty:
        return board
    return board.merge(meta, on=META_KEY, how="left")


def headline_table(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard rows of the headline measures, in reading order."""
    sub = headline(board)
    cols = ["model", "metric", "measure", "rank", "method", "mean", "ci_low", "ci_high", "n", "n_images", "direction"]
    extra = [c for c in ("worse_than_best", "beats_random", "beats_edge") if c in sub]
    extra += [c for c in ("mc_model", "mc_input") if c in sub and sub[c].notna().any()]
    return sub[cols + extra].sort_values(["model", "metric", "measure", "rank"]).reset_index(drop=True)


def write_leaderboard(root: str | Path, seed: int = 0) -> pd.DataFrame:
    """Gather every run below ``root``, rank the methods and write the leaderboard files (``leaderboard.csv``,
    ``.md``, ``.png``, ``agreement.csv``, ``.png``, ``report.md``, ``.html``) into ``root``; returns the leaderboard
    table."""
    root = Path(root)
    meta_runs = read_meta_runs(root)
    scores, runs = gather(root, meta_runs)
    board = annotate_mc(rank_methods(scores, seed=seed), gather_meta(meta_runs))
    with atomic_path(root / "leaderboard.csv") as tmp:
        board.to_csv(tmp, index=False)
    head = headline_table(board)
    n_runs = scores["run_id"].nunique() if "run_id" in scores else len(runs)
    intro = (f"{n_runs} runs below `{root}`; methods ranked per metric (1 = best by the metric's direction); "
             "mean over images x seeds [95 % cluster-bootstrap interval over images: an image's seeds are "
             "resampled together]; `n` observations, `n_images` distinct images; `worse_than_best` / "
             "`beats_random` / `beats_edge`: Wilcoxon signed-rank test paired by image (values averaged over "
             "seeds), Holm-corrected, p < 0.05.")
    if "mc_model" in head or "mc_input" in head:
        intro += (" `mc_model` / `mc_input`: the metric's meta-consistency (MetaQuantus MC, 1 = ideal: its scores stay "
                  "put under minor perturbations of the model / input and move under disruptive ones), from the "
                  "meta-evaluations (`meta.csv`) below this folder of the same model and dataset (identity), "
                  "averaged over them.")
    agree = metric_agreement(scores, seed=seed)
    with atomic_path(root / "agreement.csv") as tmp:
        agree.to_csv(tmp, index=False)
    agree_text = agreement_text(agree)
    agree_png = heatmap(agree, root / "agreement.png")
    write_text(root / "leaderboard.md", f"# Leaderboard\n\n{intro}\n\n{markdown_table(head)}\n\n"
                                        f"## Agreement between metrics\n\n{agree_text}\n")
    plots = []
    for i, (model, g) in enumerate(board.groupby("model", sort=True)):
        path = root / ("leaderboard.png" if i == 0 else f"leaderboard_{model}.png")
        if summary_bars(g, path) is not None:
            plots.append((path, f"model {model}"))
    if not plots:  # no headline measure: still write the picture the user asked for
        summary_bars(board, root / "leaderboard.png", panels=list(board[["metric", "measure"]].drop_duplicates()
                                                                  .itertuples(index=False, name=None))[:8])
        plots.append((root / "leaderboard.png", "all measures"))
    accuracy = (scores.groupby(["model", "seed"])["model_accuracy"].first().reset_index()
                if {"model", "seed", "model_accuracy"} <= set(scores) else pd.DataFrame())
    blocks = [("p", intro), ("h2", "Models"), ("table", accuracy), ("h2", "Headline measures"), ("table", head)]
    blocks += [("img", p, c) for p, c in plots]
    blocks += [("h2", "Agreement between metrics"), ("p", agree_text)]
    if agree_png is not None:
        blocks.append(("img", agree_png, "Kendall tau between the metrics' rankings of the methods"))
    blocks += [("h2", "Runs"), ("table", runs_table(runs, meta_runs))]
    write_report(root, "evalxai leaderboard", blocks)
    return board


def runs_table(runs: list[dict], meta_runs: list[dict]) -> pd.DataFrame:
    """The report's list of the runs and meta runs gathered: their labels, model identity and data fingerprint (a
    meta run whose label is empty matched no score run)."""
    rows = []
    for r, kind in [(r, "") for r in runs] + [(m, "meta-evaluation: ") for m in meta_runs]:
        cfg = r.get("config") or {}
        rows.append({"path": r["path"], "run_id": r.get("run_id"),
                     "experiment": f"{kind}{cfg.get('name')}" if kind else cfg.get("name"),
                     "seed": cfg.get("seed"), "dataset": r.get("dataset_label"), "model": r.get("model_label"),
                     "model identity": model_id(r), "data fingerprint": dataset_id(r)})
    return pd.DataFrame(rows)


def agreement_text(agree: pd.DataFrame) -> str:
    """Markdown: which metric pairs rank the methods in opposite ways (tau < 0), by how much."""
    n_pairs = int((agree["a"] < agree["b"]).sum()) if not agree.empty else 0
    if n_pairs == 0:
        return "Fewer than two metrics (or methods): no agreement to measure."
    dis = disagreements(agree)
    text = (f"Kendall tau between the rankings of the methods by two metrics (each oriented so that better is "
            f"higher; `tau`: between the methods' means, `tau_sample`: per image, averaged; 95 % bootstrap "
            f"intervals over images; `agreement.csv`, `agreement.png`). {len(dis)} of {n_pairs} pairs disagree "
            "(tau < 0)")
    if dis.empty:
        return text + "."
    cols = [c for c in ("model", "a", "b", "tau", "tau_low", "tau_high", "tau_sample", "n_images") if c in dis]
    return text + ":\n\n" + markdown_table(dis[cols].round(3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evalxai.report.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("dir", help="folder holding runs (searched recursively for scores.parquet)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        board = write_leaderboard(args.dir, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"evalxai.report.leaderboard: error: {err}", file=sys.stderr)
        return 1
    print(f"evalxai.report.leaderboard: {len(board)} rows -> {Path(args.dir) / 'leaderboard.csv'}, leaderboard.md, "
          "leaderboard.png, report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
