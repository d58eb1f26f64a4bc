"""A config becomes a meta-evaluation: ``run_meta(cfg, out_dir)`` loads the experiment's data, model, methods and
metrics as ``evalxai.runs.pipeline`` does, runs ``meta_evaluate`` with the config's ``meta`` block and writes into
``out_dir``: ``meta.csv`` (MC per metric and measure, model and input), ``meta_detail.csv`` (every IAC / IEC),
``meta_scores.parquet`` (per-sample scores, unperturbed and perturbed), ``agreement.csv`` (Kendall tau between the
metrics' rankings of the methods), ``meta.md`` (also as ``report.md`` / ``report.html``), ``plots/meta_mc.png``,
``plots/agreement.png`` and ``meta.json`` (config, timings, counts, the model with its identity and the data with
its fingerprint as in run.json; written last).

The folder holds no ``scores.parquet``, so a leaderboard over a sweep folder does not count these runs twice; it
reads their ``meta.csv`` to annotate each metric with its MC.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from evalxai.core.files import atomic_path
from evalxai.core.memory import run_scope
from evalxai.meta.evaluate import CRITERIA, meta_evaluate
from evalxai.meta.perturbation import default_tests
from evalxai.metrics import get_metric
from evalxai.report.agreement import disagreements, heatmap, label, metric_agreement
from evalxai.runs.identity import dataset_record
from evalxai.runs.pipeline import check_run, explain_cached, method_calls, prepare
from evalxai.runs.run_dir import RunDir

log = logging.getLogger("evalxai")

META_DEFAULTS = {"iterations": 5, "perturbations": 10, "model_resilience": 0.001, "model_adversary": 2.0,
                 "input_resilience": 0.001, "input_adversary": 5.0, "token_resilience": 0.02, "token_adversary": 0.5,
                 "iec_ranking": "position", "n_boot": 1000}


def meta_settings(cfg: dict) -> dict:
    """The ``meta`` block of a config over MetaQuantus's defaults; unknown keys are an error."""
    given = dict(cfg.get("meta") or {})
    unknown = set(given) - set(META_DEFAULTS)
    if unknown:
        raise ValueError(f"meta has no setting {sorted(unknown)}: it takes {sorted(META_DEFAULTS)} (evalxai.meta)")
    return {**META_DEFAULTS, **given}


def mc_plot(summary: pd.DataFrame, path: Path) -> Path | None:
    """Horizontal bars: MC (with its spread) per estimator, model and input perturbation side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary.empty:
        return None
    summary = summary.assign(label=[label(a, b) for a, b in zip(summary["metric"], summary["measure"])])
    names = sorted(summary["label"].unique())
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    for off, (space, color) in zip((-0.2, 0.2), (("model", "tab:blue"), ("input", "tab:orange"))):
        sub = summary[summary["space"] == space].set_index("label").reindex(names)
        ax.barh(y + off, sub["MC"], height=0.38, xerr=sub["MC_std"], color=color, label=f"{space} perturbation",
                error_kw={"lw": 0.8})
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("MC = mean(IAC_NR, IAC_AR, IEC_NR, IEC_AR); 1 = ideal")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Meta-consistency of each metric (MetaQuantus)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def mc_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per estimator: MC ± spread for model and input perturbations and the four criteria of each."""
    rows = []
    for (metric, measure), g in summary.groupby(["metric", "measure"], sort=True):
        row = {"metric": label(metric, measure), "direction": g["direction"].iloc[0]}
        for space in ("model", "input"):
            s = g[g["space"] == space]
            if s.empty:
                continue
            s = s.iloc[0]
            row[f"MC {space}"] = f"{s['MC']:.3f} ± {s['MC_std']:.3f}"
            row.update({f"{c} {space}": round(float(s[c]), 3) for c in CRITERIA})
        rows.append(row)
    return pd.DataFrame(rows)


def ordinary_tokens(dataset, model: torch.nn.Module) -> torch.Tensor:
    """The ids the input tests on text draw replacements from: the model's vocabulary without the special tokens
    (padding, [MASK], UNK, [CLS])."""
    from evalxai.models.text import text_model

    size = text_model(model).get_input_embeddings().num_embeddings
    special = {v for v in (*dataset.token_ids.values(), getattr(dataset.tokenizer, "cls_id", None)) if v is not None}
    return torch.tensor([i for i in range(size) if i not in special], dtype=torch.long)


def run_meta(cfg: dict, out_dir: str | Path, progress: bool = True) -> Path:
    """Run the meta-evaluation of the experiment ``cfg`` into ``out_dir``; returns the folder."""
    with run_scope(cfg.get("memory_budget"), progress):
        return _run_meta(cfg, out_dir, progress)


def _run_meta(cfg: dict, out_dir: str | Path, progress: bool) -> Path:
    t_start = time.perf_counter()
    run = RunDir(out_dir, "meta.json")
    out = run.path
    settings = meta_settings(cfg)
    methods, metrics = check_run(cfg)
    with_pool = sorted(m for m, _ in metrics if "pool" in get_metric(m).needs)
    if with_pool:
        raise ValueError(f"metrics {with_pool} take a pool of images, which the meta-evaluation does not carry "
                         "through its perturbations: drop them from the meta run (metrics=...)")
    run.begin()
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    setup = prepare(cfg, methods, metrics, seed, progress)
    dataset, model, model_info, idx, x, target, mean = (setup.dataset, setup.model, setup.model_info, setup.idx,
                                                        setup.x, setup.target, setup.mean)
    std = None if dataset.std is None else torch.tensor(dataset.std, dtype=x.dtype).view(-1, *[1] * (x.dim() - 2))

    maps = {}  # the unperturbed maps: from the attribution cache the pipeline fills, when enabled
    if cfg.get("attribution_cache", True):
        for name, method, params in method_calls(methods, setup.from_data):
            if isinstance(method, str):
                maps[name] = explain_cached(setup, method, params, cfg.get("cache_dir"))
    t_setup = time.perf_counter() - t_start

    text = setup.attention_mask is not None
    inputs = ("token_resilience", "token_adversary") if text else ("input_resilience", "input_adversary")
    tests = default_tests(settings["model_resilience"], settings["model_adversary"], *(settings[k] for k in inputs))
    res = meta_evaluate(model, x, target, methods, metrics, tests=tests, iterations=int(settings["iterations"]),
                        perturbations=int(settings["perturbations"]), seed=seed, low=dataset.low,
                        high=dataset.high, std=std, mean=mean, iec_per=settings["iec_ranking"], maps=maps,
                        progress=progress, attention_mask=setup.attention_mask, masks=setup.ground.get("masks"),
                        token_ids=setup.from_data if text else None,
                        replacements=ordinary_tokens(dataset, model) if text else None)
    model_name = model_info.get("label") or cfg["model"]["name"]
    context = {"experiment": cfg.get("name", "adhoc"), "dataset": dataset.name, "model": model_name, "seed": seed,
               "iterations": int(settings["iterations"]), "perturbations": int(settings["perturbations"]),
               "n_samples": len(idx)}
    summary = res.summary.assign(**context)
    run.csv(summary, "meta")
    run.csv(res.detail, "meta_detail")
    run.table(res.scores.assign(dataset_index=idx[res.scores["sample"].to_numpy()]), "meta_scores", ("parquet",))

    t0 = time.perf_counter()
    rows0 = res.unperturbed.assign(dataset=dataset.name, model=model_name, seed=seed,
                                   dataset_index=idx[res.unperturbed["sample"].to_numpy()])
    agree = metric_agreement(rows0, n_boot=int(settings["n_boot"]), seed=seed)
    run.csv(agree, "agreement")
    plots = run.plots
    mc_plot(res.summary, plots / "meta_mc.png")
    heatmap(agree, plots / "agreement.png")
    t_report = time.perf_counter() - t0

    timings = {"setup_s": t_setup, **res.timings, "agreement_and_plots_s": t_report,
               "wall_s": time.perf_counter() - t_start}
    table = mc_table(res.summary)
    dis = disagreements(agree)
    n_pairs = int((agree["a"] < agree["b"]).sum())
    intro = (f"Experiment {context['experiment']}: {model_name} on {dataset.name} (test accuracy "
             f"{model_info['test_accuracy']:.4f}), {len(idx)} samples, {len(methods)} methods, seed {seed}; "
             f"{settings['iterations']} iterations x {settings['perturbations']} perturbations per test. Model "
             f"tests: weights x N(1, {settings['model_resilience']}) (resilience, unchanged predictions kept) and "
             f"N(1, {settings['model_adversary']}) (adversary, changed predictions kept); input tests: "
             + (f"each ordinary token replaced by a random one with probability {settings['token_resilience']} "
                f"(resilience) and {settings['token_adversary']} (adversary)" if text else
                f"x + U(-{settings['input_resilience']}, {settings['input_resilience']}) and U(-"
                f"{settings['input_adversary']}, {settings['input_adversary']}) in pixel units, clipped to the data "
                "range")
             + f". IAC: Wilcoxon p (resilience) or 1 - p (adversary) per method; IEC: same ranking of methods "
             f"({settings['iec_ranking']}) / share of scores that got worse; MC: mean of the four (1 = ideal), "
             f"± spread over iterations.")
    kept = res.summary.groupby("space")[["kept_resilience", "kept_adversary"]].mean().round(3).reset_index()
    cost = (f"{timings['wall_s']:.1f} s in all; the meta-evaluation {res.timings['total_s']:.1f} s against "
            f"{res.timings['bare_s']:.1f} s of explain ({res.timings['explain_s']:.1f} s, "
            f"{res.timings['explain_calls']} calls) and score calls ({res.timings['score_s']:.1f} s, "
            f"{res.timings['score_calls']} calls): ratio {res.timings['ratio']:.3f}. Explained samples: "
            f"{res.timings['explained_samples']} (MetaQuantus's loop would explain "
            f"{res.timings['metaquantus_explained_samples']}).")
    dis_text = (f"{len(dis)} of {n_pairs} metric pairs rank the methods in opposite ways (tau < 0)."
                if n_pairs else "Fewer than two metrics: no agreement to report.")
    md = [("p", intro), ("h2", "Meta-consistency per metric"), ("table", table),
          ("h2", "Share of samples kept per test"), ("table", kept),
          ("img", plots / "meta_mc.png", "MC per metric (model and input perturbation)"),
          ("h2", "Agreement between metrics (Kendall tau of method rankings)"), ("p", dis_text),
          ("table", dis.drop(columns=[c for c in ("dataset", "model") if c in dis]).round(3)),
          ("img", plots / "agreement.png", "tau between the metrics' rankings of the methods"),
          ("h2", "Cost"), ("p", cost)]
    md_path, _ = run.report(f"evalxai meta-evaluation {context['experiment']}", md)
    run.text("meta.md", md_path.read_text())  # the same text under the name the leaderboard looks for
    run.finish({"config": cfg, "settings": settings, "context": context,
                "model": {**model_info, "test_accuracy": model_info["test_accuracy"]},
                "dataset": dataset_record(dataset),
                "timings": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timings.items()}})
    log.info("meta-evaluation: %d estimators, ratio %.3f, %.1fs -> %s", res.summary[["metric", "measure"]]
             .drop_duplicates().shape[0], res.timings["ratio"], timings["wall_s"], out)
    return out
