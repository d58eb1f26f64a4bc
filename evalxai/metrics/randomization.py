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
from torch import nn

from evalxai.metrics.common import explainer, scalar_rows
from evalxai.metrics.registry import register_metric

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def average_ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D along each row, ties sharing their average rank (as scipy.stats.rankdata).

    One sort; each run of equal sorted values gets (first + last position) / 2 + 1 via a running max / min of
    the run boundaries, then the ranks go back to the original order."""
    srt, order = torch.sort(a, dim=1)
    n, d = a.shape
    pos = torch.arange(d, device=a.device).expand(n, d)
    differs = srt[:, 1:] != srt[:, :-1]
    edge = torch.ones(n, 1, dtype=torch.bool, device=a.device)
    first = torch.where(torch.cat([edge, differs], 1), pos, 0).cummax(1).values
    last = torch.where(torch.cat([differs, edge], 1), pos, d).flip(1).cummin(1).values.flip(1)
    avg = (first + last).double() / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman_rows(a: torch.Tensor, b: torch.Tensor, ranked: bool = False) -> np.ndarray:
    """Spearman rank correlation of each row pair (average ranks for ties); NaN where a row is constant.
    ``ranked``: ``a`` already holds ranks."""
    ra, rb = (a if ranked else average_ranks(a)), average_ranks(b)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = ((ra ** 2).sum(1) * (rb ** 2).sum(1)).sqrt()
    rho = (ra * rb).sum(1) / den.clamp(min=1e-300)
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan"))).numpy()


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
    trained = attributions.reshape(len(x), -1).cpu()  # ranks are exact in any dtype; sorting float32 is cheaper
    ranks, ranks_abs = average_ranks(trained), average_ranks(trained.abs())
    frames = []
    signed, absolute = np.ones(len(x)), np.ones(len(x))
    for k, (name, _) in enumerate(layers, start=1):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 7919 + k)
            modules[name].reset_parameters()
        r = fn(rand, x, target).detach().reshape(len(x), -1).cpu()
        signed, absolute = spearman_rows(ranks, r, ranked=True), spearman_rows(ranks_abs, r.abs(), ranked=True)
        for measure, v in (("spearman", signed), ("spearman_abs", absolute)):
            frames.append(pd.DataFrame({"sample": np.arange(len(x)), "step": k, "measure": measure,
                                        "direction": "none", "value": v, "layer": name}))
    frames += [scalar_rows(signed, "spearman_full", "lower"), scalar_rows(absolute, "spearman_abs_full", "lower")]
    return pd.concat(frames, ignore_index=True)
