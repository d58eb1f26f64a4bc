"""Issue 29's speed targets in one run (``python -m evalxai.bench --targets``): each target's measured ratio next to
it, from the benches that measure it, with the machine's load. One summary row per target:

- pixel flipping against its bare per-step forwards (<= 1.0) and against Quantus 0.6 (>= 2x faster);
- every metric against the model passes it makes on LeNet (<= 1.2);
- the Quantus 0.6 entries on the ResNet-18 shape (>= 2x faster on at least 2/3 of the comparable ones);
- the LRP composites at 224 x 224 against one input gradient (torchvision's VGG-16 and ResNet-50 where torchvision
  imports, else the models of ``evalxai.bench.imagenet``);
- AttnLRP on vit_tiny against one gradient at 2 threads (<= 1.5).
"""
from __future__ import annotations

import pandas as pd

from evalxai.bench.imagenet import LRP_TARGETS_224
from evalxai.bench.methods import VIT_TARGET
from evalxai.bench.metrics import TARGET as METRIC_TARGET
from evalxai.bench.quantus import QUANTUS_TARGET

FLIP_BARE_TARGET = 1.0
TARGET_COMPOSITES = ("lrp_epsilon", "lrp_epsilon_plus", "lrp_epsilon_gamma_box", "lrp_epsilon_alpha2beta1")


def _row(what: str, measured: str, target: str, met: bool | None) -> dict:
    return {"target": what, "measured": measured, "wanted": target, "met": met}


def target_rows(flip: pd.DataFrame | None = None, metrics: pd.DataFrame | None = None,
                quantus: pd.DataFrame | None = None, imagenet: pd.DataFrame | None = None,
                vit: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary: one row per issue-29 target that the given bench tables measure (``bench_flip_race``,
    ``bench_all_metrics``, ``bench_quantus_realistic``, ``bench_imagenet`` and ``bench_vit`` frames)."""
    rows = []
    if flip is not None:
        by = flip.set_index("contestant")
        ratio = float(by.loc["evalxai", "ratio_to_bare"])
        rows.append(_row("pixel flipping / its bare per-step forwards", f"{ratio:.2f}", f"<= {FLIP_BARE_TARGET}",
                         ratio <= FLIP_BARE_TARGET))
        if "quantus 0.6" in by.index:
            speed = float(by.loc["quantus 0.6", "evalxai_speedup"])
            rows.append(_row("pixel flipping, speedup over Quantus 0.6", f"{speed:.2f}",
                             f">= {QUANTUS_TARGET}", speed >= QUANTUS_TARGET))
    if metrics is not None:
        timed = metrics.dropna(subset=["ratio"])
        over = timed[timed["ratio"] > METRIC_TARGET]
        rows.append(_row("metrics / their counted passes (LeNet)",
                         f"{len(timed) - len(over)} of {len(timed)} within"
                         + ("" if over.empty else "; over: " + ", ".join(
                             f"{m} {r:.2f}" for m, r in zip(over["metric"], over["ratio"]))),
                         f"all <= {METRIC_TARGET}", over.empty))
    if quantus is not None:
        ok = quantus["speedup"].notna()
        fast = int((quantus.loc[ok, "speedup"] >= QUANTUS_TARGET).sum())
        rows.append(_row("Quantus 0.6 entries >= 2x faster (ResNet-18 shape)", f"{fast} of {int(ok.sum())}",
                         ">= 2/3", bool(ok.sum()) and fast * 3 >= 2 * int(ok.sum())))
    if imagenet is not None:
        for (model, method), r in imagenet.set_index(["model", "method"])["ratio"].items():
            if method in LRP_TARGETS_224 and pd.notna(r):
                target = LRP_TARGETS_224[method]
                rows.append(_row(f"{method} / a gradient, {model} 224", f"{r:.2f}", f"<= {target}", r <= target))
    if vit is not None:
        for method, r in vit.set_index("method")["ratio"].items():
            if method in ("attnlrp", "cp_lrp"):
                rows.append(_row(f"{method} / a gradient, vit_tiny", f"{r:.2f}", f"<= {VIT_TARGET}", r <= VIT_TARGET))
    return pd.DataFrame(rows, columns=["target", "measured", "wanted", "met"])
