"""Shared pieces of metrics: score spaces, batched forwards, tidy row building."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.binding import resolve_method
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import SCORE_SPACES, batched_scores, check_score_space, target_scores  # noqa: F401
from evalxai.core.validate import require_method

# Rows leave ``direction`` empty: the registry fills it from the metric's declared directions (metrics.registry).
UNSET = None


def scalar_rows(values: torch.Tensor | np.ndarray | Sequence[float], measure: str, **extra: Any) -> pd.DataFrame:
    """One row per sample for a per-sample scalar."""
    return measure_rows({measure: values}, **extra)


def measure_rows(measures: Mapping[str, torch.Tensor | np.ndarray | Sequence[float]]
                 | Sequence[tuple[str, torch.Tensor | np.ndarray | Sequence[float]]], **extra: Any) -> pd.DataFrame:
    """One row per sample and measure, the measures (name -> per-sample values, or (name, values) pairs) in the given
    order: ``scalar_rows`` of each, concatenated, in one construction. ``extra``: columns of one value or of one
    value per row."""
    items = list(measures.items() if isinstance(measures, Mapping) else measures)
    values = [np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for _, v in items]
    n = len(values[0])
    names = items[0][0] if len(items) == 1 else np.repeat(np.array([k for k, _ in items], dtype=object), n)
    return pd.DataFrame({"sample": np.tile(np.arange(n), len(values)), "measure": names,
                         "value": values[0] if len(values) == 1 else np.concatenate(values), "direction": UNSET,
                         **extra})


def explainer(method: str | Callable | Mapping | None, method_params: dict | None, metric: str) -> Callable:
    """``f(model, x, target) -> Tensor`` for the method a re-explaining metric calls (a name, callable or mapping)."""
    require_method(method, metric)
    return resolve_method(method, dict(method_params or {}))


def explain_stack(fn: Callable, model: nn.Module, xs: torch.Tensor, target: torch.Tensor,
                  batch_size: int | None = None) -> torch.Tensor:
    """Attributions for a stack of inputs (S, N, ...) -> (S, N, ...), as many inputs per call as the memory budget
    allows for an LRP-like pass (``batch_size``: at most that many)."""
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    tgt = target.repeat(s)
    step = images_per_chunk(model, flat, "lrp", batch_size, "re-explaining perturbed inputs")
    out = torch.cat([fn(model, flat[i:i + step], tgt[i:i + step]).detach()
                     for i in chunked(len(flat), step, "re-explaining")])
    return out.view_as(xs)


def curve_rows(y: torch.Tensor, fraction: torch.Tensor | np.ndarray | Sequence[float], measure: str,
               **extra: Any) -> pd.DataFrame:
    """Curve rows from y (K + 1, N): sample, step k, fraction removed, value."""
    k1, n = y.shape
    frac = np.asarray(fraction, dtype=np.float64)
    return pd.DataFrame({"sample": np.tile(np.arange(n), k1), "step": np.repeat(np.arange(k1), n),
                         "fraction": np.repeat(frac, n), "value": y.double().cpu().numpy().reshape(-1),
                         "measure": measure, "direction": UNSET, **extra})


def normalized_auc(y: torch.Tensor, fraction: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Area under y (K + 1, N) over the removed fraction, divided by the fraction's span (RISE's normalised AUC)."""
    frac = np.asarray(fraction, dtype=np.float64)
    span = float(frac[-1] - frac[0]) or 1.0
    return np.trapezoid(y.double().cpu().numpy(), frac, axis=0) / span


@torch.no_grad()
def executed_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the Linear and convolution layers a forward pass of x[:1] calls, in the order it calls them
    (temporary forward pre-hooks, removed after: registration order, functional code in ``forward`` and nested
    containers do not matter); a module called twice is listed twice."""
    calls: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: calls.append((name, mod)))
               for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return calls
