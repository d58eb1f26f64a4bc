"""Public API: ``explain`` (attributions by method name) and ``score`` (tidy metric rows by metric name)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai._validate import (
    check_attributions,
    check_finite,
    check_inputs,
    check_logits,
    check_masks,
    check_pool,
)
from evalxai.binding import bind, resolve_method
from evalxai.memory import images_per_chunk
from evalxai.methods.guard import frozen
from evalxai.metrics import get_metric


def _chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Samples per call: what an LRP pass over them needs fits the memory budget (``evalxai.memory``); a method or
    metric with more work per sample (IG paths, perturbation stacks) chunks further inside."""
    return images_per_chunk(model, x, "lrp", None, "explaining")


def explain(model: nn.Module, x: torch.Tensor, target, method: str | Callable | dict = "lrp_epsilon_plus",
            **overrides) -> torch.Tensor:
    """Attributions of ``target`` logits for inputs ``x``, shaped like ``x``.

    ``method`` is a config name (``conf/method/<name>.yaml``), a callable ``f(model, x, target)`` or a mapping
    with ``_target_`` (a captum attribution class, e.g. ``{"_target_": "captum.attr.Saliency"}``);
    ``overrides`` are config fields (``epsilon``, ``gamma``, ``steps``, ...). The model is left as it was.
    ``low`` / ``high`` / ``mean`` (box bounds, black and uniform baselines, the mean image) are model-space values:
    unset, they are ``evalxai.baselines.data_range``'s [0, 1] pixels; for normalised inputs pass the model-space
    values of black and white, (0 - mean) / std and (1 - mean) / std per channel, as the pipeline does.
    """
    x, target = check_inputs(model, x, target)
    fn = resolve_method(method, overrides)
    with frozen(model):
        step = _chunk(model, x)
        parts = [fn(model, x[i:i + step], target[i:i + step]) for i in range(0, len(x), step)]
        attributions = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not isinstance(attributions, torch.Tensor) or attributions.shape != x.shape:
        raise ValueError(f"method {method!r} returned {getattr(attributions, 'shape', type(attributions))}, "
                         f"expected a tensor of shape {tuple(x.shape)}")
    check_finite(attributions, f"attributions of {method!r}")
    return attributions.detach()


def row_major_order(sample: np.ndarray) -> np.ndarray | None:
    """The permutation that puts rows in the order (k-th row of each sample, sample), k counted per sample in
    table order; None when they already are."""
    by_sample = np.argsort(sample, kind="stable")
    s = sample[by_sample]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    k = np.empty(len(sample), dtype=np.int64)
    k[by_sample] = np.arange(len(sample)) - np.repeat(starts, np.diff(np.r_[starts, len(sample)]))
    order = np.lexsort((sample, k))
    return None if np.array_equal(order, np.arange(len(sample))) else order


def score(model: nn.Module, x: torch.Tensor, target, attributions: torch.Tensor, metric: str = "pixel_flipping",
          masks=None, pool=None, **overrides) -> pd.DataFrame:
    """Tidy rows (sample, metric, measure, step, value, direction, ...) of ``metric`` for the attributions.

    ``masks`` (N, H, W) bool, True = relevant pixel: the ground truth of localisation metrics (those that need
    ``masks``: ``evalxai.metrics.METRICS[name].needs``), chunked with the samples. ``pool`` = (images, labels):
    images the metric may compose with (``focus`` builds mosaics of them), the same for every chunk. Giving either
    to a metric that does not need it is an error, as is leaving out one a metric needs. ``low`` / ``high`` /
    ``mean``: as in ``explain`` (the data range and the mean image in model space; unset,
    ``evalxai.baselines.data_range``'s [0, 1]). What the call receives is decided by ``evalxai.binding.bind``.
    """
    x, target = check_inputs(model, x, target)
    check_attributions(attributions, x)
    spec = get_metric(metric)
    params = {**spec.defaults, **bind(spec, {**overrides, "masks": masks, "pool": pool})}
    if "masks" in spec.needs:
        masks = check_masks(params.pop("masks"), x, metric)
    if "pool" in spec.needs:
        params["pool"] = check_pool(params["pool"], x, metric)
    check_logits(model, x)
    attributions = attributions.to(x.dtype)
    with frozen(model):
        step = _chunk(model, x)
        frames = []
        for i in range(0, len(x), step):
            chunk = params if masks is None else {**params, "masks": masks[i:i + step]}
            part = pd.DataFrame(spec.fn(model, x[i:i + step], target[i:i + step], attributions[i:i + step], **chunk))
            if i:
                part["sample"] = part["sample"] + i
            frames.append(part)
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    # rows in the order the metric writes them for one batch (row k of every sample, then row k + 1), whatever
    # the chunks: the table does not depend on the memory budget
    order = row_major_order(df["sample"].to_numpy())
    df = df.reset_index(drop=True) if order is None else df.take(order).reset_index(drop=True)
    df.insert(0, "metric", metric)
    for col, default in (("step", pd.NA), ("measure", metric)):
        if col not in df:
            df[col] = default
    df["step"] = df["step"].astype("Int64")
    df["sample"] = df["sample"].astype("int64")
    return df
