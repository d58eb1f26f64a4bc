"""One experiment's prototypes, scored: the dataset and the (cached) model as the pipeline loads them, the generator
of ``generator=NAME`` (``conf/generator/``; default ``vae_<dataset>``), the ``prototypes`` block of
``conf/maximize.yaml`` (which an experiment may override), and ``make_prototypes``, which computes the prototypes of
every class in input and code space and their naturalness scores. ``claims`` checks the paper's claims on its table;
``cli`` writes it into a run folder."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from evalxai.binding import unset_filled
from evalxai.generators import available, generator_config, get_generator
from evalxai.maximization.naturalness import get_classifier, naturalness
from evalxai.maximization.prototypes import SPACES, maximize
from evalxai.models import get_model
from evalxai.runs.pipeline import load_run_dataset

BLOCK = {"classes": None, "spaces": list(SPACES), "seeds": [0], "input": {}, "code": {},
         "classifier": {"kind": "logistic"}, "reference": True}


def load_data_model(cfg: dict, progress: bool = False):
    """(dataset, model, model info) of a resolved config, with the functions the pipeline uses."""
    dataset, mcfg = load_run_dataset(cfg), dict(cfg["model"])
    model, info = get_model(dataset, mcfg, dict(mcfg.pop("train", {}) or {}), seed=int(cfg.get("seed", 0)),
                            cache_dir=cfg.get("cache_dir"), progress=progress)
    return dataset, model, info


def generator_for(cfg: dict, dataset, progress: bool = False):
    """The run's generator: ``cfg.generator`` (a config of conf/generator/) or ``vae_<dataset>``."""
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
    """The config's ``prototypes`` block over the defaults (``BLOCK``); unknown fields and spaces are refused."""
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

