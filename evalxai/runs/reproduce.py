"""Paper reproductions: ``python -m evalxai.runs.reproduce NAME`` (a folder of ``experiments/``) or ``all``.

Each folder holds ``config.yaml`` (``overrides``: Hydra overrides of ``conf/config.yaml``; ``set``: top-level
fields replaced as a whole, e.g. ``methods`` and ``metrics``; run through the normal pipeline) and
``claims.yaml`` (statement, source, and how to check it). A claim is checked in one of three ways:

- ``compare``: method ``better`` beats method ``than`` on (metric, measure), by the measure's direction, tested
  by a paired Wilcoxon signed-rank test over the same samples (Holm-corrected over the paper's comparisons);
  verdict *holds* (better, p < 0.05), *does not hold* (worse, p < 0.05) or *inconclusive*.
- ``threshold``: a statistic (``mean`` or ``max`` over samples) of (metric, measure) for ``method`` against a
  bound (``<=`` or ``>=``).
- ``check``: a named computation in ``CHECKS`` that returns its own measured value and verdict (the analytic
  max(x1, x2) toy, the ROAD mask-leakage classifier).

Writes ``report.md``, ``report.html`` and ``claims.csv`` per paper under ``results/reproduce/<name>/`` (and a
combined report for ``all``). A claim that fails here is reported as such: nothing is tuned to make it hold.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import yaml

from evalxai._paths import CONF, EXPERIMENTS
from evalxai.core.files import atomic_path
from evalxai.report.document import write_report
from evalxai.report.stats import holm, wilcoxon_p
from evalxai.report.tables import bootstrap_ci
from evalxai.runs import allocator

if TYPE_CHECKING:
    from evalxai.data.base import Dataset

ALPHA = 0.05


def available() -> list[str]:
    return sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "claims.yaml").exists())


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def dataset_and_model(overrides: list[str]) -> tuple[dict, Dataset, torch.nn.Module]:
    """(config, dataset, trained model) of a composed config; the model from the cache, trained on first use."""
    from evalxai.data import load_dataset
    from evalxai.models import get_model

    cfg = compose(overrides)
    dcfg, mcfg = dict(cfg["dataset"]), dict(cfg["model"])
    dataset = load_dataset(dcfg.pop("name"), cache_dir=cfg.get("cache_dir"), **dcfg)
    model, _ = get_model(dataset, mcfg, dict(mcfg.pop("train", {}) or {}), seed=int(cfg.get("seed", 0)),
                         cache_dir=cfg.get("cache_dir"), progress=False)
    return cfg, dataset, model


def _fmt(mean, lo, hi) -> str:
    return f"{mean:.4g} [{lo:.4g}, {hi:.4g}]"


def _values(scores: pd.DataFrame, method: str, metric: str, measure: str) -> pd.Series:
    sub = scores[(scores["method"] == method) & (scores["metric"] == metric) & (scores["measure"] == measure)
                 & scores["step"].isna()]
    if sub.empty:
        raise ValueError(f"no rows for method '{method}', {metric}/{measure}: check the claim against the config")
    return sub.groupby(["seed", "dataset_index"])["value"].mean()


def check_compare(claim: dict, scores: pd.DataFrame) -> dict:
    c = claim["compare"]
    a, b = _values(scores, c["better"], claim["metric"], claim["measure"]), _values(scores, c["than"],
                                                                                    claim["metric"], claim["measure"])
    direction = scores[scores["measure"] == claim["measure"]]["direction"].iloc[0]
    joined = pd.concat([a, b], axis=1, join="inner").to_numpy()
    (ma, la, ha), (mb, lb, hb) = [(np.nanmean(v), *bootstrap_ci(v)) for v in (joined[:, 0], joined[:, 1])]
    sign = 1 if direction == "higher" else -1
    return {"expected": f"{c['better']} {'>' if sign > 0 else '<'} {c['than']} ({direction} is better)",
            "measured": f"{c['better']} {_fmt(ma, la, ha)} vs {c['than']} {_fmt(mb, lb, hb)}; n={len(joined)}",
            "p": wilcoxon_p(joined[:, 0], joined[:, 1]), "better": bool(sign * (ma - mb) > 0)}


def check_threshold(claim: dict, scores: pd.DataFrame) -> dict:
    t = claim["threshold"]
    v = _values(scores, claim["method"], claim["metric"], claim["measure"]).to_numpy()
    stat = float(np.nanmax(v) if t.get("stat", "mean") == "max" else np.nanmean(v))
    lo, hi = bootstrap_ci(v)
    ok = stat <= t["value"] if t["op"] == "<=" else stat >= t["value"]
    return {"expected": f"{t.get('stat', 'mean')} {claim['measure']} of {claim['method']} {t['op']} {t['value']}",
            "measured": f"{t.get('stat', 'mean')} = {stat:.3g} (mean {_fmt(np.nanmean(v), lo, hi)}, n={len(v)})",
            "verdict": "holds" if ok else "does not hold"}


def max_toy(claim: dict, scores: pd.DataFrame) -> dict:
    """Montavon 2018 §7.1: on f = max(x1, x2) (a two-layer ReLU net) the gradient and gradient x input jump at
    x1 = x2 while deep Taylor (z+) is continuous: continuity along a path crossing the diagonal, step -> 0."""
    import evalxai
    from evalxai.metrics.robustness import path_continuity

    model = torch.nn.Sequential(torch.nn.Linear(2, 3, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(3, 1, bias=False)).double().eval()
    model[0].weight.data = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    model[2].weight.data = torch.full((1, 3), 0.5, dtype=torch.float64)
    out = {}
    for step in (1e-2, 1e-4):
        s = torch.linspace(-10 * step, 10 * step, 21, dtype=torch.float64)
        xs = torch.stack([1.0 + s, 1.0 - s], 1)
        t = torch.zeros(21, dtype=torch.long)
        for m in ("gradient", "gradient_x_input", "lrp_zplus"):
            r = evalxai.explain(model, xs, t, method=m)
            out[(m, step)] = float(path_continuity(r.unsqueeze(1), xs.unsqueeze(1), 10)["continuity_path"][0])
    grows = all(out[(m, 1e-4)] > 10 * out[(m, 1e-2)] for m in ("gradient", "gradient_x_input"))
    bounded = out[("lrp_zplus", 1e-4)] < 2 * out[("lrp_zplus", 1e-2)] + 1e-9
    return {"expected": "continuity ratio of gradient and gradient x input grows without bound as the step "
                        "shrinks; z+ stays bounded",
            "measured": "; ".join(f"{m} {out[(m, 1e-2)]:.3g} -> {out[(m, 1e-4)]:.3g}"
                                  for m in ("gradient", "gradient_x_input", "lrp_zplus")) + " (step 1e-2 -> 1e-4)",
            "verdict": "holds" if grows and bounded else "does not hold"}


def road_mask_leakage(claim: dict, scores: pd.DataFrame) -> dict:
    """Rong 2022: the shape of a MoRF removal mask alone reveals the class. A logistic regression trained only
    on binary masks (top ``fraction`` of pixels by relevance) predicts the label above chance (5-fold CV)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    import evalxai

    p = claim["params"]
    _, dataset, model = dataset_and_model(claim.get("overrides", []))
    x, y = dataset.x_test[: p["n"]], dataset.y_test[: p["n"]]
    r = evalxai.explain(model, x, y, method=p["method"]).sum(1).flatten(1)
    k = int(round(p["fraction"] * r.shape[1]))
    masks = torch.zeros_like(r)
    masks.scatter_(1, r.topk(k, dim=1).indices, 1.0)
    acc = cross_val_score(LogisticRegression(max_iter=2000), masks.numpy(), y.numpy(), cv=5)
    chance = float(np.bincount(y.numpy()).max() / len(y))
    lo = acc.mean() - 1.96 * acc.std(ddof=1) / np.sqrt(len(acc))
    return {"expected": f"accuracy from {p['method']} MoRF masks (top {p['fraction']:.0%}) > chance {chance:.2f}",
            "measured": f"5-fold accuracy {acc.mean():.3f} (fold range {acc.min():.3f}-{acc.max():.3f}; "
                        f"n={len(y)})",
            "verdict": "holds" if lo > chance else ("does not hold" if acc.mean() <= chance else "inconclusive")}


def prototypes(claim: dict, scores: pd.DataFrame) -> dict:
    """Montavon 2018 §3: code-space against input-space activation-maximization prototypes (evalxai.maximize)."""
    from evalxai.maximization.claims import check

    return check(claim, scores)


CHECKS = {"max_toy": max_toy, "road_mask_leakage": road_mask_leakage, "prototypes": prototypes}


def reproduce(name: str, out_root: Path, overrides: list[str] | None = None, progress: bool = False) -> pd.DataFrame:
    """Run one paper folder and write its report; returns the claims table."""
    from evalxai.runs.pipeline import run_experiment

    folder = EXPERIMENTS / name
    if not (folder / "claims.yaml").exists():
        raise FileNotFoundError(f"unknown reproduction '{name}': choose one of {available()} or all")
    spec = yaml.safe_load((folder / "claims.yaml").read_text())
    config = (yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else None) or {}
    out = out_root / name
    scores = pd.DataFrame()
    run_cfg = None
    if config.get("overrides") is not None:
        run_cfg = {**compose(config["overrides"]), **(config.get("set") or {})}
        if overrides:  # command-line overrides win over the paper's settings
            extra = compose([*config["overrides"], *overrides])
            for key in (o.split("=")[0].lstrip("+~") for o in overrides):
                top = key.split(".")[0]
                if "." in key and top in (config.get("set") or {}):
                    raise ValueError(f"override '{key}' reaches inside '{top}', which {name} sets as a whole: "
                                     f"override '{top}' itself")
                run_cfg[top] = extra[top]
        run_dir = run_experiment(run_cfg, out / "run", progress=progress)
        scores = pd.read_parquet(run_dir / "scores.parquet")
    rows = []
    for claim in spec["claims"]:
        if "check" in claim:
            res = CHECKS[claim["check"]]({**claim, "overrides": [*claim.get("overrides", []), *(overrides or [])]},
                                         scores)
        elif "compare" in claim:
            res = check_compare(claim, scores)
        else:
            res = check_threshold(claim, scores)
        rows.append({"paper": spec["paper"], "claim": claim["id"], "statement": claim["statement"],
                     "source": claim["source"], **res})
    table = pd.DataFrame(rows)
    compared = table["p"].notna() if "p" in table else pd.Series(False, index=table.index)
    if compared.any():
        table.loc[compared, "p_holm"] = holm(table.loc[compared, "p"].to_numpy())
        sig = table["p_holm"] < ALPHA
        table.loc[compared, "verdict"] = np.where(sig[compared] & table.loc[compared, "better"], "holds",
                                                  np.where(sig[compared], "does not hold", "inconclusive"))
    table = table.drop(columns=[c for c in ("better",) if c in table])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "claims.csv") as tmp:
        table.to_csv(tmp, index=False)
    shown = table[["claim", "expected", "measured", "verdict"]]
    blocks = [("p", f"{spec['paper']}. {spec.get('summary', '')}"), ("table", shown)]
    blocks += [("h2", "Claims"), ("table", table[["claim", "statement", "source"]])]
    if run_cfg is not None:
        blocks += [("img", out / "run" / "plots" / f"{p}.png", p) for p in ("summary", "pixel_flipping",
                                                                             "continuity", "heatmaps")]
        blocks += [("h2", "Configuration"), ("pre", yaml.safe_dump(config, sort_keys=False))]
    write_report(out, f"Reproduction: {name}", blocks)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evalxai.runs.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("name", help=f"one of {available()} or all")
    p.add_argument("--out", default="results/reproduce")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. n_samples=8)")
    args = p.parse_args(argv)
    allocator.tune()
    names = available() if args.name == "all" else [args.name]
    out = Path(args.out)
    tables = []
    try:
        for name in names:
            print(f"reproducing {name} ...", flush=True)
            tables.append(reproduce(name, out, args.overrides))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"evalxai.runs.reproduce: error: {err}", file=sys.stderr)
        return 1
    table = pd.concat(tables, ignore_index=True)
    if len(names) > 1:
        with atomic_path(out / "claims.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_report(out, "Reproductions", [("table", table[["paper", "claim", "expected", "measured",
                                                              "verdict"]])])
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(table[["paper", "claim", "verdict"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
