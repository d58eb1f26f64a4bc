"""The one place where a config becomes a run: data -> model -> attributions -> metrics -> tables, plots.

``run_experiment(cfg, out_dir)`` takes a plain dict (the resolved Hydra config) and writes
``scores.parquet``, ``scores.csv``, ``summary.csv``, ``run.json`` and ``plots/*.png`` into ``out_dir``,
every file atomically (a temporary file renamed into place), so no partial file carries a final name. Before the
first map it logs what the explaining and scoring will cost (``evalxai.runs.estimate``; run.json's ``estimate``).
"""
from __future__ import annotations

import logging
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import evalxai
from evalxai.binding import bind
from evalxai.core.validate import check_config
from evalxai.data import load_dataset, provides_masks
from evalxai.methods import get_method
from evalxai.methods.cache import STATS as ATTR_STATS
from evalxai.methods.cache import attribution_key, cached
from evalxai.metrics import METRICS, get_metric
from evalxai.models import get_model
from evalxai.models.custom import checkpoint_sha256
from evalxai.models.text import EmbeddingsInput, token_logits
from evalxai.report import TIDY_COLUMNS, plots, summarize
from evalxai.report.tokens import token_html, token_png
from evalxai.runs.estimate import duration, estimate_run, time_passes
from evalxai.runs.identity import code_record, config_key, dataset_record, is_complete
from evalxai.runs.run_dir import RunDir

log = logging.getLogger("evalxai")


def sample_indices(n_test: int, n: int, seed: int = 0) -> np.ndarray:
    """A fixed sample of the test split: the first n of a seeded permutation (all of it, with a warning, when n is
    larger than the split)."""
    if n < 1:
        raise ValueError(f"n_samples={n} must be >= 1")
    if n > n_test:
        warnings.warn(f"n_samples={n} is more than the {n_test} images of the test split: running on {n_test}; set "
                      f"n_samples<={n_test} or use a larger test split", UserWarning, stacklevel=2)
    return np.random.default_rng(seed).permutation(n_test)[: min(n, n_test)]


def method_list(cfg: dict) -> list[tuple[str, dict]]:
    """(name, overrides) for every method of the run: ``method`` (one, with params) or ``methods`` (+ params).

    An entry of ``methods`` is a registered name or a mapping ``{name: ..., _target_: ..., **params}`` naming a
    foreign explainer (a captum attribution class or a function, see ``evalxai.methods.foreign``).
    """
    if cfg.get("method"):
        m = dict(cfg["method"])
        return [(m.pop("name", None) or str(m.get("_target_")), m)]
    per = cfg.get("method_params") or {}
    out = []
    for entry in cfg.get("methods") or []:
        if isinstance(entry, str):
            out.append((entry, dict(per.get(entry) or {})))
        else:
            m = dict(entry)
            if "_target_" not in m:
                raise ValueError(f"methods entry {m} is neither a method name nor a mapping with _target_")
            name = m.pop("name", None) or str(m["_target_"]).rpartition(".")[2]
            out.append((name, {**m, **dict(per.get(name) or {})}))
    return out


POOL_SIZE = 256  # train images (stratified, seed 0) given to metrics that take a pool (focus's mosaics)


def check_run(cfg: dict) -> tuple[list, list]:
    """(methods, metrics) of the run, every name known and every parameter accepted (else an error naming it); a
    metric that needs ground-truth masks on a dataset without them fails here, before any data are read."""
    methods, metrics = method_list(cfg), metric_list(cfg)
    dcfg = dict(cfg.get("dataset") or {})
    for name, params in metrics:
        spec = get_metric(name)
        check_config(spec, params)
        if "masks" in spec.needs and not provides_masks(dcfg.get("name", ""), dcfg):
            raise ValueError(f"metric '{name}' needs masks, and dataset={dcfg.get('name')} has none: use a dataset "
                             "with masks (dataset=xai_tris, dataset=decoy_mnist, or dataset=image_folder with "
                             "dataset.masks=DIR), or drop the metric")
    for name, params in methods:
        if "_target_" not in params:
            bind(get_method(name), params)
    clash = sorted({name for name, _ in methods} & {"x", "target", "dataset_index"})
    if cfg.get("save_attributions", False) and clash:
        raise ValueError(f"method names {clash} collide with the arrays of attributions.npz: rename them")
    return methods, metrics


def _asks_for_mean(methods, metrics) -> bool:
    """Whether any method or metric of the run uses the ``mean`` baseline (or reference)."""
    def uses(params: dict) -> bool:
        return any(params.get(k) == "mean" for k in ("baseline", "reference"))

    return any(uses(p) for _, p in methods) or any(uses(p) or uses(dict(p.get("method_params") or {}))
                                                    for _, p in metrics)


def method_calls(methods: list[tuple[str, dict]], from_data: dict) -> list[tuple[str, object, dict]]:
    """(name, method, params) to call ``evalxai.explain`` with: a registered method gets the dataset's values
    (``low``, ``high``, ``mean``) for the parameters it takes and the config leaves unset (``evalxai.binding.bind``);
    a foreign one (``_target_``) is passed as its mapping."""
    return [(name, overrides, {}) if "_target_" in overrides else
            (name, name, bind(get_method(name), overrides, data=from_data)) for name, overrides in methods]


def metric_call(metric: str, mparams: dict, method, method_params: dict, from_data: dict,
                ground: dict | None = None) -> dict:
    """Parameters of one metric call (``evalxai.binding.bind``): the config's, with the dataset's ``mean`` / ``low``
    / ``high`` and, for a metric that needs ``method``, the method being scored with its parameters (unless the
    config names its own method) where the metric takes them and the config leaves them unset; the masks / pool of
    ``ground`` where the metric needs them."""
    return bind(get_metric(metric), mparams, data=from_data, scored=(method, method_params), ground=ground)


def metric_list(cfg: dict) -> list[tuple[str, dict]]:
    """(name, overrides) for every metric of the run: ``metric`` (one, with params) or ``metrics`` (name -> params;
    ``{}`` = the metric's defaults, ``null`` = not run: how an experiment drops a metric of ``conf/config.yaml``'s
    defaults, as ``experiment=text_lrp`` drops the image metrics)."""
    if cfg.get("metric"):
        m = dict(cfg["metric"])
        return [(m.pop("name"), m)]
    return [(name, dict(params)) for name, params in (cfg.get("metrics") or {}).items() if params is not None]


def check_modality(metrics: list[tuple[str, dict]], dataset) -> None:
    """Every metric of the run scores the dataset's inputs (images or other float inputs, or token ids): checked
    before a model is trained or loaded."""
    kind = "tokens" if getattr(dataset, "modality", "image") == "text" else "float"
    wrong = [m for m, _ in metrics if kind not in get_metric(m).inputs]
    if wrong:
        fits = [m for m in METRICS if kind in get_metric(m).inputs]
        raise ValueError(f"metrics {wrong} do not score the {'token ids' if kind == 'tokens' else 'float inputs'} of "
                         f"dataset={dataset.name}: drop them (metrics.NAME=null) or use metrics that do: {fits}")


def run_report(run: RunDir, cfg: dict, run_id: str, accuracy: float, summary: pd.DataFrame, n: int,
               model_name: str, text: bool = False) -> None:
    """``report.md`` / ``report.html`` of one run: config, model accuracy, headline summary, plots."""
    import yaml

    from evalxai.report.tables import headline

    head = headline(summary)
    blocks = [("p", f"Experiment {cfg.get('name', 'adhoc')}, dataset {cfg['dataset']['name']}, model "
                    f"{model_name} (test accuracy {accuracy:.4f}), {n} samples, seed {cfg.get('seed', 0)}."),
              ("h2", "Summary (mean, 95 % bootstrap interval)"), ("table", head)]
    figures = ((("summary", "per-method means with intervals"), ("token_flipping", "token-flipping curves"),
                ("token_heatmaps", "token relevance (tokens.html: every sample)")) if text else
               (("summary", "per-method means with intervals"), ("pixel_flipping", "pixel-flipping curves"),
                ("continuity", "continuity along the translation path"), ("heatmaps", "attributions")))
    blocks += [("img", run.plots / f"{name}.png", caption) for name, caption in figures]
    blocks += [("h2", "Configuration"), ("pre", yaml.safe_dump(cfg, sort_keys=False))]
    run.report(f"evalxai run {run_id}", blocks)


def load_run_dataset(cfg: dict):
    """The run's dataset (``cfg["dataset"]``); loaders read lazily, so this lists files but decodes none."""
    dcfg = dict(cfg["dataset"])
    return load_dataset(dcfg.pop("name"), cache_dir=cfg.get("cache_dir"), **dcfg)


def ground_truth_record(ground: dict, dataset, metrics) -> dict:
    """run.json's account of the ground truth a run used: masks (what they mark, mean relevant pixels, or tokens of
    text), pool size."""
    masks = ground.get("masks")
    return {"masks": masks is not None, "mask_meta": dict(dataset.mask_meta) if masks is not None else None,
            "relevant_pixels_mean": None if masks is None else float(masks.flatten(1).sum(1).double().mean()),
            "pool": len(ground["pool"][1]) if "pool" in ground else None,
            "metrics": sorted({m for m, _ in metrics if set(get_metric(m).needs) & set(ground)})}


@dataclass
class Setup:
    """What a run explains and scores: the dataset, the model (on its device), the sample's indices, inputs,
    labels and targets, and what the dataset defines for methods and metrics (``from_data``: low, high, mean;
    ``ground``: masks of the explained images and a pool of train images, for the metrics that take them)."""
    dataset: object
    model: torch.nn.Module
    model_info: dict
    idx: np.ndarray
    x: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    mean: torch.Tensor | None
    from_data: dict
    ground: dict
    device: torch.device
    attention_mask: torch.Tensor | None = None  # text: (n, T), 1 = token, 0 = padding; None for images

    @property
    def text(self) -> bool:
        return self.attention_mask is not None

    @property
    def inputs(self) -> dict:
        """What ``evalxai.explain`` / ``evalxai.score`` take besides (model, x, target): the attention mask of text."""
        return {} if self.attention_mask is None else {"attention_mask": self.attention_mask}


def prepare(cfg: dict, methods, metrics, seed: int, progress: bool = True, timings: dict | None = None,
            dataset=None) -> Setup:
    """Load the dataset (unless given) and the model (trained once, cached), draw the fixed test sample and its
    targets (``target=predicted`` or the labels), and read what the run's methods and metrics take from the data."""
    timings = {} if timings is None else timings
    cache_dir = cfg.get("cache_dir")
    if dataset is None:
        t0 = time.perf_counter()
        dataset = load_run_dataset(cfg)
        timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mcfg = dict(cfg["model"])
    train_cfg = dict(mcfg.pop("train", {}) or {})
    model, model_info = get_model(dataset, mcfg, train_cfg, seed=seed, cache_dir=cache_dir, progress=progress)
    device = torch.device(cfg.get("device") or "cpu")
    model = model.to(device)
    timings["model_s"] = time.perf_counter() - t0

    idx = sample_indices(len(dataset), int(cfg.get("n_samples", 128)), int(cfg.get("sample_seed", 0)))
    x, labels = dataset.test_items(idx)
    x = x.to(device)
    text = getattr(dataset, "modality", "image") == "text"
    attention_mask = dataset.attention_mask(x).to(device) if text else None
    if cfg.get("target", "predicted") == "predicted":
        with torch.no_grad():
            target = (model(x) if attention_mask is None else token_logits(model, x, attention_mask)).argmax(1)
    else:
        target = labels.to(device)
    if text:  # token ids: the baseline tokens (pad, [MASK], UNK) of methods and metrics that take them
        mean, from_data = None, dict(dataset.token_ids)
    else:  # the training-set mean image is read (the whole train split) only when a baseline or reference asks
        mean = dataset.mean_image() if _asks_for_mean(methods, metrics) else None
        from_data = {"low": dataset.low, "high": dataset.high, "mean": mean}
    ground = {}
    if any("masks" in get_metric(m).needs for m, _ in metrics):
        if not dataset.has_masks:
            raise ValueError(f"dataset {dataset.name} carries no masks, but metrics {[m for m, _ in metrics]} include "
                             "one that needs them")
        ground["masks"] = dataset.test_masks(idx).to(device)
    if any("pool" in get_metric(m).needs for m, _ in metrics):
        ground["pool"] = tuple(t.to(device) for t in dataset.pool(POOL_SIZE, seed=0))
    return Setup(dataset, model, model_info, idx, x, labels, target, mean, from_data, ground, device, attention_mask)


def timing_inputs(setup: Setup) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, inputs) whose forward and input gradient the cost estimate times: the model itself on images; for text
    the model as a function of its word embeddings (``EmbeddingsInput``, the first sample's mask), on the embeddings."""
    if not setup.text:
        return setup.model, setup.x
    wrapped = EmbeddingsInput(setup.model, setup.attention_mask[:1])
    return wrapped, wrapped.embed(setup.x)


def token_heatmaps(setup: Setup, maps: dict[str, np.ndarray], names: list[str], run: RunDir, n: int = 6) -> None:
    """``tokens.html`` (every sample of the run) and ``plots/token_heatmaps.png`` (the first ``n``): each method's
    relevance per token as coloured text, the ground-truth rationale underlined where the data carry one."""
    lengths = setup.attention_mask.sum(1).cpu().tolist()
    tokens = [setup.dataset.tokenizer.decode(row[:k]) for row, k in zip(setup.x.cpu().tolist(), lengths)]
    titles = [f"sample {int(i)}: label {setup.dataset.classes[int(y)]}, explained class {name}"
              for i, y, name in zip(setup.idx, setup.labels, names)]
    rationale = setup.ground["masks"].cpu().numpy() if "masks" in setup.ground else None
    token_html(tokens, maps, run.path / "tokens.html", titles, rationale,
               title=f"Token relevance: {setup.model_info.get('label', 'model')} on {setup.dataset.name}")
    token_png(tokens[:n], {k: v[:n] for k, v in maps.items()}, run.plots / "token_heatmaps.png", titles[:n],
              None if rationale is None else rationale[:n])


def explain_cached(setup: Setup, method, params: dict, cache_dir=None, enabled: bool = True) -> torch.Tensor:
    """The method's maps of the run's sample, from the attribution cache (keyed by model, method, parameters,
    sample and targets) or computed and stored there; on the run's device."""
    # the dataset's mean image is a tensor: the key names it (the model key already holds the dataset)
    key_params = {k: "dataset mean image" if k == "mean" and v is setup.mean and v is not None else v
                  for k, v in params.items()}
    key = attribution_key(setup.model_info["key"], method, key_params, setup.idx, setup.target, setup.x.dtype)
    maps, _ = cached(key, lambda: evalxai.explain(setup.model, setup.x, setup.target, method=method, **setup.inputs,
                                                  **params), cache_dir, enabled=enabled)
    return maps.to(setup.device)


def run_plan(setup: Setup, methods: list[tuple[str, dict]],
             metrics: list[tuple[str, dict]]) -> list[tuple[str, object, dict, list[tuple[str, dict]]]]:
    """(method name, method, its parameters, [(metric, the parameters its call receives), ...]) for every method of
    the run, in order: what the run explains and scores, and what ``evalxai.runs.estimate`` counts."""
    return [(name, method, params, [(metric, metric_call(metric, mparams, method, params, setup.from_data,
                                                         setup.ground)) for metric, mparams in metrics])
            for name, method, params in method_calls(methods, setup.from_data)]


def run_experiment(cfg: dict, out_dir: str | Path, progress: bool = True) -> Path:
    """Run one experiment config into ``out_dir``; returns the folder. ``memory_budget`` (e.g. "4GB") bounds
    what methods and metrics hold at once; the numbers do not depend on it."""
    from evalxai.core.memory import run_scope

    with run_scope(cfg.get("memory_budget"), progress):
        return _run_experiment(cfg, out_dir, progress)


def _run_experiment(cfg: dict, out_dir: str | Path, progress: bool = True) -> Path:
    run = RunDir(out_dir)
    out = run.path
    methods, metrics = check_run(cfg)  # a misspelled name or parameter fails now, before data are read
    t_start = time.perf_counter()
    dataset = load_run_dataset(cfg)
    check_modality(metrics, dataset)
    timings: dict[str, float] = {"data_s": time.perf_counter() - t_start}
    checkpoint_sha = checkpoint_sha256(cfg["model"])
    data_fingerprint = dataset.fingerprint()
    run_key = config_key(cfg, data_fingerprint, checkpoint_sha)
    if not cfg.get("force", False) and is_complete(out, run_key):
        log.info("run in %s is complete (same config, data and checkpoint): nothing to do; force=true recomputes",
                 out)
        return out
    run.begin()  # until this run finishes, the folder holds no complete run
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    cache_dir = cfg.get("cache_dir")

    setup = prepare(cfg, methods, metrics, seed, progress, timings, dataset)
    dataset, model, model_info, idx, x, target = (setup.dataset, setup.model, setup.model_info, setup.idx, setup.x,
                                                   setup.target)
    accuracy = model_info["test_accuracy"]

    frames, maps = [], {}
    hits0, use_cache = ATTR_STATS["hits"], bool(cfg.get("attribution_cache", True))
    plan = run_plan(setup, methods, metrics)
    t0 = time.perf_counter()
    timed_model, timed_x = timing_inputs(setup)
    estimate = estimate_run(timed_model, timed_x, plan, time_passes(timed_model, timed_x, target),
                            model_info.get("label") or cfg["model"]["name"])
    timings["estimate_s"] = time.perf_counter() - t0
    log.info("%s", estimate.describe())
    t_work = time.perf_counter()
    bar = tqdm(plan, desc="methods", disable=not progress)
    for name, method, params, bound in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        attributions = explain_cached(setup, method, params, cache_dir, use_cache)
        timings[f"explain:{name}_s"] = time.perf_counter() - t0
        maps[name] = attributions.cpu().numpy()
        for metric, mp in bound:
            t0 = time.perf_counter()
            df = evalxai.score(model, x, target, attributions, metric=metric, **setup.inputs, **mp)
            timings[f"score:{metric}:{name}_s"] = time.perf_counter() - t0
            df["method"] = name
            frames.append(df)
    timings["explain_and_score_s"] = time.perf_counter() - t_work

    scores = pd.concat(frames, ignore_index=True)
    run_id = run_key[:12]  # the same config, data, checkpoint and code give the same run id (and the same table)
    scores["run_id"] = run_id
    scores["experiment"] = cfg.get("name", "adhoc")
    scores["dataset"] = dataset.name
    model_name = model_info.get("label") or cfg["model"]["name"]
    scores["model"] = model_name
    scores["model_accuracy"] = accuracy
    scores["dataset_index"] = idx[scores["sample"].to_numpy()]
    scores["target"] = target.cpu().numpy()[scores["sample"].to_numpy()]
    scores["seed"] = seed
    for col in TIDY_COLUMNS:
        if col not in scores:
            scores[col] = pd.NA
    scores["score_space"] = scores["score_space"].astype("string")
    scores["fraction"] = scores["fraction"].astype("Float64")
    extra = [c for c in scores.columns if c not in TIDY_COLUMNS]
    scores = scores[TIDY_COLUMNS + extra]
    run.table(scores, "scores")
    if cfg.get("save_attributions", False):  # the inputs as the model saw them, and one map per method
        run.arrays("attributions", {"x": x.cpu().numpy(), "target": target.cpu().numpy(),
                                    "dataset_index": np.asarray(idx), **maps})
    summary = summarize(scores, seed=seed)
    run.csv(summary, "summary")

    t0 = time.perf_counter()
    pdir = run.plots
    names = [str(dataset.classes[int(c)]) if int(c) < len(dataset.classes) else str(int(c)) for c in target.cpu()]
    if setup.text:
        token_heatmaps(setup, maps, names, run)
        plots.flipping_curves(scores, pdir / "token_flipping.png", metric="token_flipping")
    else:
        plots.heatmap_grid(dataset.denormalize(x.cpu()).numpy(), maps, pdir / "heatmaps.png", labels=names)
        plots.flipping_curves(scores, pdir / "pixel_flipping.png")
    plots.summary_bars(summary, pdir / "summary.png")
    plots.continuity_curves(scores, pdir / "continuity.png")
    timings["plots_s"] = time.perf_counter() - t0
    run_report(run, cfg, run_id, accuracy, summary, len(idx), model_name, setup.text)
    timings["total_s"] = time.perf_counter() - t_start
    run.finish({  # written last: its presence marks a complete run
        "run_id": run_id, "config_key": run_key, "config": cfg, "code": code_record(),
        "cache": {"model_hit": bool(model_info.get("cache_hit")), "attribution_hits": ATTR_STATS["hits"] - hits0,
                  "attribution_misses": len(methods) - (ATTR_STATS["hits"] - hits0)},
        "model": {**model_info, "test_accuracy": accuracy},
        "dataset": dataset_record(dataset, data_fingerprint),
        "n_samples": len(idx), "n_samples_requested": int(cfg.get("n_samples", 128)),
        "ground_truth": ground_truth_record(setup.ground, dataset, metrics),
        "versions": {"evalxai": evalxai.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "pandas": pd.__version__, "python": platform.python_version()},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "estimate": estimate.record(),
    })
    log.info("run %s: %d rows, model accuracy %.4f, %.1fs -> %s", run_id, len(scores), accuracy,
             timings["total_s"], out)
    log.info("explaining and scoring took %s (estimated %s)", duration(timings["explain_and_score_s"]),
             duration(estimate.seconds))
    return out
