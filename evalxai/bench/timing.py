"""What every bench shares: interleaved timing rounds, the plain gradient pass that method ratios divide by, and
Markdown tables."""
from __future__ import annotations

import time

import pandas as pd
import torch

from evalxai.core.guard import frozen
from evalxai.methods.gradient import target_grad


def interleaved(calls: dict, repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Median-ready timings: every call once per round (after a warm-up round, unless the caller ran one),
    ``repeats`` rounds."""
    for f in calls.values() if warmup else ():
        f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def gradient_pass(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One plain gradient of the target logits (forward + backward, no hooks, no evalxai.explain around it): the
    bare cost that the method benches divide by."""
    with frozen(model, warn_train=False):
        return target_grad(model, x, t)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of the values as given (the caller rounds; no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
