"""Leaderboard across runs: ``python -m evalxai.leaderboard DIR``.

Gathers every ``scores.parquet`` below DIR (one run, a sweep, several sweeps), ranks the methods per
(dataset, model, metric, measure) with cluster-bootstrap intervals over images, tests them pairwise over the same
images (Wilcoxon signed-rank, Holm-corrected) against the best method and the controls, and writes ``leaderboard.csv``,
``leaderboard.md``, ``leaderboard.png`` and ``report.md`` / ``report.html`` into DIR. Runs are pooled only where they
differ in seed: a model or dataset is its identity (run.json's ``model.identity``, ``dataset.fingerprint``), and
one name with several identities becomes several labels (``name@<8 characters of the identity>``).

It also says how far each ranking's metric can be trusted: when DIR holds meta-evaluations
(``python -m evalxai.meta``: ``meta.csv``), each metric is annotated with its meta-consistency MC (model and input
perturbation, mean ± spread); and it measures how much the metrics agree (Kendall tau between their rankings of
the methods, ``agreement.csv``, ``agreement.png``), listing the pairs that disagree (tau < 0) in the markdown.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from evalxai._io import atomic_path, write_text
from evalxai.report.agreement import agreement, disagreements, heatmap
from evalxai.report.document import markdown_table, write_report
from evalxai.report.plots import summary_bars
from evalxai.report.stats import leaderboard
from evalxai.report.tables import headline


def distinct(names: list[str], ids: list[str | None]) -> list[str]:
    """``names`` told apart by identity: ``name@<first 8 characters of id>`` wherever one name stands for several
    ids (two checkpoints of one class, two image folders), the plain name otherwise."""
    several = {n for n in set(names) if len({i for m, i in zip(names, ids) if m == n}) > 1}
    return [f"{n}@{i[:8]}" if n in several and i else n for n, i in zip(names, ids)]


def model_id(run: dict) -> str | None:
    """A run's model identity from its run.json: ``model.identity`` (runs before it: the checkpoint's SHA-256)."""
    model = run.get("model") or {}
    return model.get("identity") or model.get("checkpoint_sha256")


def gather(root: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """Concatenated tidy tables and run.json contents of every run below ``root``. Runs whose models (or datasets)
    share a name but not an identity (run.json's ``model.identity`` and ``dataset.fingerprint``) get distinct
    ``model`` (``dataset``) labels (``distinct``), so that only runs differing in seed are pooled."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' is not a directory: give the folder that holds the runs (e.g. results/)")
    paths = sorted(p for p in root.rglob("scores.parquet") if not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no scores.parquet below '{root}': run an experiment there first "
                                "(python -m evalxai experiment=mnist_smoke hydra.run.dir=...)")
    frames, runs = [], []
    for p in paths:
        frames.append(pd.read_parquet(p))
        meta = p.parent / "run.json"
        runs.append({"path": str(p.parent), **(json.loads(meta.read_text()) if meta.exists() else {})})
    for col, ident in (("model", model_id), ("dataset", lambda r: (r.get("dataset") or {}).get("fingerprint"))):
        names = [str(f[col].iloc[0]) if col in f and len(f) else "" for f in frames]
        for f, run, label in zip(frames, runs, distinct(names, [ident(r) for r in runs])):
            run[f"{col}_label"] = label
            if col in f:
                f[col] = label
    return pd.concat(frames, ignore_index=True), runs


MC_COLUMNS = ("mc_model", "mc_model_std", "mc_input", "mc_input_std")
META_KEY = ["dataset", "model", "metric", "measure"]


def gather_meta(root: str | Path) -> pd.DataFrame:
    """MC per (dataset, model, metric, measure) from every ``meta.csv`` below ``root`` (runs of
    ``python -m evalxai.meta``), averaged over meta runs: columns ``mc_model``, ``mc_model_std``, ``mc_input``,
    ``mc_input_std``, ``meta_runs``. Empty when there is none."""
    paths = sorted(p for p in Path(root).rglob("meta.csv") if not p.name.startswith("."))
    if not paths:
        return pd.DataFrame(columns=[*META_KEY, *MC_COLUMNS, "meta_runs"])
    meta = pd.concat([pd.read_csv(p).assign(meta_run=str(p.parent)) for p in paths], ignore_index=True)
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


def build(root: str | Path, seed: int = 0) -> pd.DataFrame:
    """Write the leaderboard files into ``root``; returns the leaderboard table."""
    root = Path(root)
    scores, runs = gather(root)
    board = annotate_mc(leaderboard(scores, seed=seed), gather_meta(root))
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
                  "meta-evaluations (`meta.csv`) below this folder.")
    agree = agreement(scores, seed=seed)
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
    blocks += [("h2", "Runs"), ("table", pd.DataFrame([{"path": r["path"], "run_id": r.get("run_id"),
                                                         "experiment": (r.get("config") or {}).get("name"),
                                                         "seed": (r.get("config") or {}).get("seed"),
                                                         "dataset": r["dataset_label"], "model": r["model_label"],
                                                         "model identity": model_id(r),
                                                         "data fingerprint": (r.get("dataset") or {}).get(
                                                             "fingerprint")} for r in runs]))]
    write_report(root, "evalxai leaderboard", blocks)
    return board


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evalxai.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("dir", help="folder holding runs (searched recursively for scores.parquet)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        board = build(args.dir, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"evalxai.leaderboard: error: {err}", file=sys.stderr)
        return 1
    print(f"evalxai.leaderboard: {len(board)} rows -> {Path(args.dir) / 'leaderboard.csv'}, leaderboard.md, "
          "leaderboard.png, report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
