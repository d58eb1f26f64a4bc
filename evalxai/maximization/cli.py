"""``python -m evalxai.maximization experiment=NAME``: prototypes of every class in input and code space, scored.

The run loads the dataset and the (cached) model as the pipeline does, takes xbar (the train mean image) and the
data range from the dataset, and the generator from ``generator=NAME`` (``conf/generator/``; default
``vae_<dataset>``), trained on first use and cached. Settings: the ``prototypes`` block of ``conf/maximize.yaml``,
which an experiment may override. It writes into the run folder:
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

import numpy as np
import pandas as pd
import torch

from evalxai._io import atomic_path, write_json
from evalxai.maximization.claims import verdicts
from evalxai.maximization.naturalness import SCORES, get_classifier, naturalness
from evalxai.maximization.prototypes import SPACES, maximize

log = logging.getLogger("evalxai")
BLOCK = {"classes": None, "spaces": list(SPACES), "seeds": [0], "input": {}, "code": {},
         "classifier": {"kind": "logistic"}, "reference": True}


def load_data_model(cfg: dict, progress: bool = False):
    """(dataset, model, model info) of a resolved config, with the functions the pipeline uses."""
    from evalxai.data import load_dataset
    from evalxai.models import get_model

    dcfg, mcfg = dict(cfg["dataset"]), dict(cfg["model"])
    dataset = load_dataset(dcfg.pop("name"), cache_dir=cfg.get("cache_dir"), **dcfg)
    model, info = get_model(dataset, mcfg, dict(mcfg.pop("train", {}) or {}), seed=int(cfg.get("seed", 0)),
                            cache_dir=cfg.get("cache_dir"), progress=progress)
    return dataset, model, info


def generator_for(cfg: dict, dataset, progress: bool = False):
    """The run's generator: ``cfg.generator`` (a config of conf/generator/) or ``vae_<dataset>``."""
    from evalxai.generators import available, generator_config, get_generator

    gcfg = cfg.get("generator")
    if not gcfg:
        name = f"vae_{dataset.name}"
        if name not in available():
            raise ValueError(f"no generator for dataset '{dataset.name}': write conf/generator/{name}.yaml (the fields "
                             f"of vae_mnist.yaml with dataset: {dataset.name}) or choose generator=NAME of "
                             f"{available()}")
        gcfg = generator_config(name)
    return get_generator(dict(gcfg), dataset=dataset, cache_dir=cfg.get("cache_dir"), progress=progress)


def prototypes_block(cfg: dict) -> dict:
    block = {**BLOCK, **(cfg.get("prototypes") or {})}
    unknown = sorted(set(block) - set(BLOCK))
    if unknown:
        raise ValueError(f"prototypes block has unknown field(s) {unknown}: it takes {sorted(BLOCK)}")
    bad = sorted(set(block["spaces"]) - set(SPACES))
    if bad:
        raise ValueError(f"prototypes.spaces {bad} unknown: choose from {list(SPACES)}")
    return block


def make_prototypes(cfg: dict, progress: bool = False) -> dict:
    """Everything the run computes: {table, images, timings, infos, dataset, classes}."""
    from evalxai.pipeline import unset_filled

    block = prototypes_block(cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset, model, model_info = load_data_model(cfg, progress)
    timings["model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    generator = generator_for(cfg, dataset, progress) if "code" in block["spaces"] else None
    timings["generator_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf_params = dict(block["classifier"] or {})
    classifier = get_classifier(dataset, clf_params.pop("kind", "logistic"), seed=int(cfg.get("seed", 0)),
                                cache_dir=cfg.get("cache_dir"), **clf_params)
    timings["classifier_s"] = time.perf_counter() - t0
    classes = torch.tensor(block["classes"] if block["classes"] is not None else range(dataset.num_classes))
    mean = dataset.mean_image()
    train_pixels, _ = dataset.train_pixels()
    frames, images = [], {}
    for space in block["spaces"]:
        params = dict(block[space] or {})
        if space == "input":
            params = unset_filled(params, ("low", "high"), {"low": dataset.low, "high": dataset.high})
        t0 = time.perf_counter()
        for seed in block["seeds"]:
            x = maximize(model, classes, space, generator=generator, mean=mean, **{**params, "seed": int(seed)})
            images[(space, int(seed))] = x
            df = naturalness(model, x, classes, classifier, generator, dataset, train_pixels)
            df[["model_correct", "independent_correct"]] = df[["model_correct", "independent_correct"]].astype(float)
            df.insert(1, "space", space)
            df.insert(2, "seed", int(seed))
            frames.append(df)
        timings[f"{space}_s"] = time.perf_counter() - t0
    reference = None
    if block["reference"]:
        t0 = time.perf_counter()
        xt, yt = dataset.test_items(np.arange(len(dataset)))
        ref = naturalness(model, xt, yt, classifier, generator, dataset, train_pixels)
        ref[["model_correct", "independent_correct"]] = ref[["model_correct", "independent_correct"]].astype(float)
        keep = ref["class"].isin(classes.tolist())
        med = ref[keep].groupby("class", as_index=False).median(numeric_only=True)
        med.insert(1, "space", "test_median")
        med["seed"] = -1
        frames.append(med)
        # the test image of each class whose model log-prob is that class's median (shown beside the prototypes)
        pick = [int((ref["model_log_prob"].where(ref["class"] == c) - med.set_index("class").loc[c, "model_log_prob"])
                    .abs().idxmin()) for c in classes.tolist()]
        reference = xt[pick]
        timings["reference_s"] = time.perf_counter() - t0
    table = pd.concat(frames, ignore_index=True)
    table["class_name"] = [str(dataset.classes[int(c)]) for c in table["class"]]
    table["model"] = model_info.get("label")
    table["dataset"] = dataset.name
    return {"table": table, "images": images, "reference": reference, "timings": timings, "dataset": dataset,
            "classes": classes, "infos": {"model": model_info, "generator": getattr(generator, "info", None),
                                          "classifier": classifier.info}}


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per space: mean of each score, and how many prototypes the model and the independent classifier recognise."""
    cols = [c for c in SCORES if c in table] + ["model_correct"]
    out = table.groupby("space")[cols].mean(numeric_only=True)
    out["n"] = table.groupby("space").size()
    out["independent_recognised"] = table.groupby("space")["independent_correct"].sum()
    return out.reset_index()


def grid(rows: list[tuple[str, torch.Tensor]], labels: list[str], path: Path, scores=None) -> Path:
    """One row per entry of ``rows`` (label, pixel images (K, C, H, W)); columns: classes (``labels``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def write_outputs(result: dict, out: Path, cfg: dict) -> dict:
    table, dataset, classes = result["table"], result["dataset"], result["classes"]
    labels = [str(dataset.classes[int(c)]) for c in classes]
    with atomic_path(out / "prototypes.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "prototypes.csv") as tmp:
        table.to_csv(tmp, index=False)
    summ = summary(table)
    with atomic_path(out / "summary.csv") as tmp:
        summ.to_csv(tmp, index=False)
    claims = verdicts(table)
    with atomic_path(out / "claims.csv") as tmp:
        claims.to_csv(tmp, index=False)
    arrays = {f"{space}_seed{seed}": x.cpu().numpy() for (space, seed), x in result["images"].items()}
    with atomic_path(out / "prototypes.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, classes=classes.numpy(), **arrays)
    first = {space: x for (space, seed), x in result["images"].items() if seed == cfg_seed0(result)}
    prob = {space: table[(table["space"] == space) & (table["seed"] == cfg_seed0(result))]["independent_prob"]
            .to_numpy() for space in first}
    plots = {}
    for space, x in first.items():
        plots[space] = grid([(f"{space} space", dataset.denormalize(x.float()))], labels,
                            out / "plots" / f"prototypes_{space}.png", {f"{space} space": prob[space]})
    rows = ([("test image", dataset.denormalize(result["reference"].float()))] if result["reference"] is not None
            else []) + [(f"{s} space", dataset.denormalize(x.float())) for s, x in first.items()]
    plots["all"] = grid(rows, labels, out / "plots" / "prototypes.png")
    return {"summary": summ, "claims": claims, "plots": {k: str(v) for k, v in plots.items()}}


def cfg_seed0(result: dict) -> int:
    return min(seed for _, seed in result["images"])


def run_prototypes(cfg: dict, out_dir, progress: bool = False) -> Path:
    """Make, score and plot the prototypes of a resolved config into ``out_dir``; returns the folder."""
    from evalxai.pipeline import writable_dir

    out = writable_dir(out_dir)
    (out / "run.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = make_prototypes(cfg, progress)
    written = write_outputs(result, out, cfg)
    timings = {**result["timings"], "total_s": time.perf_counter() - t0}
    write_json(out / "run.json", {"config": cfg, "timings": {k: round(v, 3) for k, v in timings.items()},
                                  **result["infos"], "plots": written["plots"],
                                  "claims": written["claims"].to_dict("records")})
    log.info("prototypes: %s", out)
    return out
