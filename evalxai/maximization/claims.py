"""The claim of Montavon, Samek & Mueller 2018 (§3, Fig. 2) as tests: code-space prototypes are more natural than
input-space ones. Paired over (class, seed): the same class, one prototype per space.

- ``recognised``: the independent classifier gives code-space prototypes a higher target probability;
- ``on_manifold``: the VAE reconstructs them with a lower error (closer to the data manifold it learnt);
- ``near_data``: they lie closer to their nearest training image (no model involved).

Each is a two-sided paired Wilcoxon signed-rank test, Holm-corrected over the three; *holds* when significant
(p < 0.05) in the claimed direction, *does not hold* when significant against it, else *inconclusive*.
``python -m evalxai.runs.reproduce montavon2018_prototypes`` reports them (check ``prototypes``).
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evalxai._paths import CONF
from evalxai.maximization.experiment import make_prototypes
from evalxai.report.stats import holm, wilcoxon_p

ALPHA = 0.05
CLAIMS = {"recognised": ("independent_prob", "higher"), "on_manifold": ("recon_error", "lower"),
          "near_data": ("nn_distance", "lower")}


def compare(table: pd.DataFrame, measure: str, direction: str) -> dict:
    """Code vs input space on ``measure``, paired by (class, seed): means, p, and whether code is better."""
    wide = table[table["space"].isin(["input", "code"])].pivot_table(index=["class", "seed"], columns="space",
                                                                      values=measure)
    if not {"input", "code"} <= set(wide.columns):
        raise ValueError("the claims compare input- and code-space prototypes: run both spaces")
    wide = wide.dropna()
    a, b = wide["code"].to_numpy(float), wide["input"].to_numpy(float)
    sign = 1 if direction == "higher" else -1
    rec = ""
    if measure == "independent_prob":
        rec = (f"; recognised (argmax) code {int((table[table.space == 'code'].independent_correct).sum())}/{len(a)}, "
               f"input {int((table[table.space == 'input'].independent_correct).sum())}/{len(b)}")
    ref = table.loc[table["space"] == "test_median", measure]
    ref_txt = f"; test images (median per class, mean) {ref.mean():.4g}" if len(ref) else ""
    return {"expected": f"code {'>' if sign > 0 else '<'} input on {measure} ({direction} is better)",
            "measured": f"code {a.mean():.4g} vs input {b.mean():.4g} (mean, n={len(a)} pairs){rec}{ref_txt}",
            "p": wilcoxon_p(a, b), "better": bool(sign * (a.mean() - b.mean()) > 0)}


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The three claims on a prototypes table: expected, measured, p, Holm-adjusted p, verdict."""
    rows = [{"claim": name, **compare(table, *spec)} for name, spec in CLAIMS.items()]
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy())
    sig = out["p_holm"] < ALPHA
    out["verdict"] = np.where(sig & out["better"], "holds", np.where(sig, "does not hold", "inconclusive"))
    return out


@functools.lru_cache(maxsize=4)
def _table(overrides: tuple[str, ...]) -> pd.DataFrame:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = OmegaConf.to_container(compose("maximize", overrides=list(overrides)), resolve=True)
    return make_prototypes(cfg)["table"]


def check(claim: dict, scores=None) -> dict:
    """A ``check: prototypes`` claim of ``evalxai.runs.reproduce``: ``params.claim`` names one of ``CLAIMS``; the
    prototypes come from ``python -m evalxai.maximization`` with the claim's overrides (computed once per process).
    Returns expected / measured / p / better; the reproduction applies Holm over the paper's claims."""
    name = claim["params"]["claim"]
    if name not in CLAIMS:
        raise ValueError(f"prototype claim '{name}' is unknown: choose one of {sorted(CLAIMS)}")
    return compare(_table(tuple(claim.get("overrides") or ())), *CLAIMS[name])
