"""``python -m evalxai.maximization experiment=NAME``: prototypes of every class in input and code space, scored.

The run (``experiment.make_prototypes``) loads the dataset and the (cached) model as the pipeline does, takes xbar
(the train mean image) and the data range from the dataset, and the generator from ``generator=NAME``
(``conf/generator/``; default ``vae_<dataset>``), trained on first use and cached. Settings: the ``prototypes``
block of ``conf/maximize.yaml``, which an experiment may override. It writes into the run folder:
``prototypes.csv`` / ``.parquet`` (one row per prototype: class, space, seed and the naturalness scores, plus one
reference row per class with the medians over that class's test images), ``summary.csv`` (per space),
``claims.csv`` (code vs input space, paired over classes and seeds), ``prototypes.npz``, ``plots/prototypes.png``
(rows: a median test image, input space, code space), ``plots/prototypes_{input,code}.png`` and ``run.json``
(config, model, generator and classifier info, timings).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (as evalxai.report.plots)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from evalxai.core.files import atomic_path  # noqa: E402
from evalxai.maximization.claims import verdicts  # noqa: E402
from evalxai.maximization.experiment import make_prototypes  # noqa: E402
from evalxai.maximization.naturalness import SCORES  # noqa: E402
from evalxai.runs.run_dir import RunDir  # noqa: E402

log = logging.getLogger("evalxai")


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per space: mean of each score, and how many prototypes the model and the independent classifier recognise."""
    cols = [c for c in SCORES if c in table] + ["model_correct"]
    out = table.groupby("space")[cols].mean(numeric_only=True)
    out["n"] = table.groupby("space").size()
    out["independent_recognised"] = table.groupby("space")["independent_correct"].sum()
    return out.reset_index()


def grid(rows: list[tuple[str, torch.Tensor]], labels: list[str], path: Path, scores=None) -> Path:
    """One row per entry of ``rows`` (label, pixel images (K, C, H, W)); columns: classes (``labels``)."""
    k = len(labels)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.1 * k + 0.9, 1.25 * len(rows) + 0.3), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            img = imgs[c].clamp(0, 1).cpu().numpy()
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None and scores.get(name) is not None:
                ax.set_title(f"{labels[c]}: {scores[name][c]:.2f}", fontsize=7)
            elif r == 0:
                ax.set_title(labels[c], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout(pad=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def write_outputs(result: dict, run: RunDir, cfg: dict) -> dict:
    table, dataset, classes = result["table"], result["dataset"], result["classes"]
    labels = [str(dataset.classes[int(c)]) for c in classes]
    run.table(table, "prototypes")
    summ = summary(table)
    run.csv(summ, "summary")
    claims = verdicts(table)
    run.csv(claims, "claims")
    arrays = {f"{space}_seed{seed}": x.cpu().numpy() for (space, seed), x in result["images"].items()}
    run.arrays("prototypes", {"classes": classes.numpy(), **arrays})
    first = {space: x for (space, seed), x in result["images"].items() if seed == cfg_seed0(result)}
    prob = {space: table[(table["space"] == space) & (table["seed"] == cfg_seed0(result))]["independent_prob"]
            .to_numpy() for space in first}
    plots = {}
    for space, x in first.items():
        plots[space] = grid([(f"{space} space", dataset.denormalize(x.float()))], labels,
                            run.plots / f"prototypes_{space}.png", {f"{space} space": prob[space]})
    rows = ([("test image", dataset.denormalize(result["reference"].float()))] if result["reference"] is not None
            else []) + [(f"{s} space", dataset.denormalize(x.float())) for s, x in first.items()]
    plots["all"] = grid(rows, labels, run.plots / "prototypes.png")
    return {"summary": summ, "claims": claims, "plots": {k: str(v) for k, v in plots.items()}}


def cfg_seed0(result: dict) -> int:
    return min(seed for _, seed in result["images"])


def run_prototypes(cfg: dict, out_dir, progress: bool = False) -> Path:
    """Make, score and plot the prototypes of a resolved config into ``out_dir``; returns the folder."""
    run = RunDir(out_dir)
    run.begin()
    t0 = time.perf_counter()
    result = make_prototypes(cfg, progress)
    written = write_outputs(result, run, cfg)
    timings = {**result["timings"], "total_s": time.perf_counter() - t0}
    run.finish({"config": cfg, "timings": {k: round(v, 3) for k, v in timings.items()}, **result["infos"],
                "plots": written["plots"], "claims": written["claims"].to_dict("records")})
    log.info("prototypes: %s", run.path)
    return run.path
