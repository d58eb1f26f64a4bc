"""Model-parameter randomization (Adebayo et al. 2018): cascading re-initialisation from the top layer.

A copy of the model has its parametrised layers (Linear / Conv, in reverse registration order, i.e. output
first) re-initialised one more at a time with their own ``reset_parameters`` (seeded); after each, the method
explains the same inputs and the Spearman rank correlation with the trained model's map is computed per sample,
on the signed maps and on their absolute values. A method that explains the model decorrelates (lower is
better); one that does not depend on the parameters (an edge detector) stays at 1. The model itself is never
touched.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

from evalxai.metrics.common import explainer, scalar_rows
from evalxai.metrics.registry import register_metric

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair (average ranks for ties); NaN where a row is constant."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


@register_metric("randomization", seed=0, method=None, method_params=None)
def randomization(model, x, target, attributions, seed=0, method=None, method_params=None):
    """Cascading randomization: Spearman correlation (signed and absolute) per randomized layer; scalars after
    all layers are randomized (lower is better)."""
    fn = explainer(method, method_params, "randomization")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)][::-1]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to randomize")
    rand = copy.deepcopy(model)
    modules = dict(rand.named_modules())
    trained = attributions.reshape(len(x), -1).double().cpu().numpy()
    frames = []
    signed, absolute = np.ones(len(x)), np.ones(len(x))
    for k, (name, _) in enumerate(layers, start=1):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 7919 + k)
            modules[name].reset_parameters()
        r = fn(rand, x, target).detach().reshape(len(x), -1).double().cpu().numpy()
        signed, absolute = spearman_rows(trained, r), spearman_rows(np.abs(trained), np.abs(r))
        for measure, v in (("spearman", signed), ("spearman_abs", absolute)):
            frames.append(pd.DataFrame({"sample": np.arange(len(x)), "step": k, "measure": measure,
                                        "direction": "none", "value": v, "layer": name}))
    frames += [scalar_rows(signed, "spearman_full", "lower"), scalar_rows(absolute, "spearman_abs_full", "lower")]
    return pd.concat(frames, ignore_index=True)
