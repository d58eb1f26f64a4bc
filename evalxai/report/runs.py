"""Reading run folders: the tidy tables and run.json of every run below a folder (``gather``), the meta runs
(``read_meta_runs``), and the run identity that keeps runs apart: a model or dataset is its identity (run.json's
``model.identity``, ``dataset.fingerprint``), and one name with several identities becomes several labels
(``distinct``: ``name@<8 characters of the identity>``), so that only runs differing in seed are pooled. The
leaderboard and the ground-truth report both read runs through here."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def distinct(names: list[str], ids: list[str | None]) -> list[str]:
    """``names`` told apart by identity: ``name@<first 8 characters of id>`` wherever one name stands for several
    ids (two checkpoints of one class, two image folders), the plain name otherwise."""
    several = {n for n in set(names) if len({i for m, i in zip(names, ids) if m == n}) > 1}
    return [f"{n}@{i[:8]}" if n in several and i else n for n, i in zip(names, ids)]


def model_id(run: dict) -> str | None:
    """A run's model identity from its run.json: ``model.identity`` (runs before it: the checkpoint's SHA-256)."""
    model = run.get("model") or {}
    return model.get("identity") or model.get("checkpoint_sha256")


def dataset_id(run: dict) -> str | None:
    """A run's dataset identity from its run.json (or meta.json): ``dataset.fingerprint``."""
    return (run.get("dataset") or {}).get("fingerprint")


IDENTITIES = (("model", model_id), ("dataset", dataset_id))


def read_meta_runs(root: str | Path) -> list[dict]:
    """Every meta run below ``root`` (``python -m evalxai.meta``): its meta.json contents with ``path`` and its
    ``meta.csv`` as ``table``."""
    runs = []
    for p in sorted(p for p in Path(root).rglob("meta.csv") if not p.name.startswith(".")):
        info = p.parent / "meta.json"
        runs.append({**(json.loads(info.read_text()) if info.exists() else {}), "path": str(p.parent),
                     "table": pd.read_csv(p)})
    return runs


def gather(root: str | Path, meta_runs: list[dict] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Concatenated tidy tables and run.json contents of every run below ``root``. Runs whose models (or datasets)
    share a name but not an identity (run.json's ``model.identity`` and ``dataset.fingerprint``) get distinct
    ``model`` (``dataset``) labels (``distinct``), so that only runs differing in seed are pooled.

    ``meta_runs`` (``read_meta_runs``) are labelled in the same pass, by their meta.json's identities, so that a
    meta run of a checkpoint carries that checkpoint's label: each gets ``model_label`` and ``dataset_label``. A
    meta run without an identity (older than meta.json's record of it) takes the label of the score runs of its
    name where they have one label, else ``None``: it matches no row (``gather_meta`` leaves it out)."""
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
    metas = list(meta_runs or [])
    for col, ident in IDENTITIES:
        names = [str(f[col].iloc[0]) if col in f and len(f) else "" for f in frames]
        meta_names = [str(m["table"][col].iloc[0]) if col in m["table"] and len(m["table"]) else "" for m in metas]
        known = [i for i, m in enumerate(metas) if ident(m)]  # meta runs with an identity join the labelling
        labels = distinct(names + [meta_names[i] for i in known], [ident(r) for r in runs]
                          + [ident(metas[i]) for i in known])
        for f, run, label in zip(frames, runs, labels):
            run[f"{col}_label"] = label
            if col in f:
                f[col] = label
        meta_labels = dict(zip(known, labels[len(runs):]))
        for i, m in enumerate(metas):
            if i not in meta_labels:  # no identity: the one label of the score runs of its name, if one
                of_name = {label for n, label in zip(names, labels) if n == meta_names[i]}
                meta_labels[i] = of_name.pop() if len(of_name) == 1 else None
            m[f"{col}_label"] = meta_labels[i]
    return pd.concat(frames, ignore_index=True), runs


