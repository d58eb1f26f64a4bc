"""Sufficiency (Dasgupta, Frost & Moshkovitz 2022, "Framework for evaluating faithfulness of local explanations",
ICML): an explanation is sufficient when the inputs it also explains get the same prediction.

The paper's local sufficiency of x is Pr_{x' ~ mu}[f(x') = f(x) | e(x) applies to x'], estimated from samples of
the data distribution mu. Quantus 0.6 estimates it within the batch being scored (the other samples of the batch
whose maps lie within a threshold distance), so a sample's score depends on which samples share its batch and on a
batch-wide normalisation of the distances. evalxai keeps the definition and changes the sample of mu, so that the
score belongs to the sample alone: mu is the neighbourhood of x, ``samples`` noisy copies
x'_s = x + N(0, (noise * (high - low))^2) (clipped into [low, high] when the bounds are given), each re-explained
with the run's method.

"e(x) applies to x'" needs a notion of close maps. The paper's (and Quantus's) fixed distance threshold does not
carry across methods: on LeNet / MNIST with noise 0.3 the median cosine distance between R(x) and R(x') is 0.13 for
LRP-epsilon-plus, 0.29 for gradient x input and 0.34 for the gradient, so one threshold takes every neighbour for one
method (sufficiency = the base rate of kept labels) and none for another (NaN). The default rule is therefore
``applies="nearest"``: the map applies to the ``nearest`` share of the neighbours whose maps are closest to R(x)
(cosine distance; ties by draw order), a per-sample, scale-free neighbourhood that is never empty.
``applies="threshold"`` keeps the paper's rule, cosine distance d(R(x), R(x')) <= ``threshold``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import data_range
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.seeding import per_sample_noise
from evalxai.metrics.common import explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import Passes, register_metric
from evalxai.metrics.robustness import bounded


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) over all but the leading dims of a (S, N, ...) against b (N, ...), float64; two zero maps are at
    distance 0, a zero map and a non-zero one at distance 1."""
    a = a.reshape(*a.shape[:2], -1).double()
    b = b.reshape(1, b.shape[0], -1).double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(-1) / (na * nb).clamp(min=1e-300)
    both_zero = (na == 0) & (nb == 0)
    one_zero = (na == 0) ^ (nb == 0)
    return torch.where(both_zero, 0.0, torch.where(one_zero, 1.0, 1.0 - cos))


def neighbours(x: torch.Tensor, seed: int, samples: int, noise: float, low: float | torch.Tensor | None = None,
               high: float | torch.Tensor | None = None) -> torch.Tensor:
    """(samples, N, ...) noisy copies x + N(0, (noise * (high - low))^2), drawn per sample, clipped into [low, high]
    when the bounds are given (the span high - low: ``evalxai.core.baselines.data_range``'s, 1, when they are not)."""
    lo, hi = data_range(low, high, x)
    xs = x.unsqueeze(0) + noise * (hi - lo) * per_sample_noise(x, seed + 5, samples, "normal").to(x.dtype)
    return bounded(xs, low, high)


@torch.no_grad()
def predicted_labels(model: nn.Module, xs: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """argmax of the logits for a stack (S, N, ...) -> (S, N), in chunks of the memory budget."""
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    step = images_per_chunk(model, flat, "forward", batch_size, "sufficiency labels")
    return torch.cat([model(flat[i:i + step]).argmax(1) for i in chunked(len(flat), step, "labels")]).view(s, n)


APPLIES = ("nearest", "threshold")


@register_metric("sufficiency", family="faithfulness", needs=("method",),
                 cost=lambda model, x, p: Passes(int(p["samples"]) + 1, int(p["samples"])),
                 directions={"sufficiency": "higher", "sufficiency_gain": "higher", "agreement": "none",
                             "neighbours": "none"})
def sufficiency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, samples: int = 20,
                noise: float = 0.3, applies: str = "nearest", nearest: float = 0.25, threshold: float = 0.2,
                seed: int = 0, method: str | Callable | dict | None = None, method_params: dict | None = None,
                batch_size: int | None = None, low: float | torch.Tensor | None = None,
                high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Sufficiency: share of the noisy neighbours whose maps are closest to R(x) that keep the predicted label.

    Dasgupta et al. 2022, per sample against ``samples`` perturbed neighbours (see the module docstring): among the
    neighbours x' the map applies to (``applies``: the ``nearest`` share with the closest maps, or those within
    ``threshold`` cosine distance), R(x') re-explained for the same target, the share with argmax f(x') = argmax f(x).
    Higher is better. Rows: ``sufficiency``; ``agreement`` (the share of *all* neighbours that keep the label: the
    base rate, what a map unrelated to the model scores in expectation); ``sufficiency_gain`` = sufficiency -
    agreement (higher is better: how much knowing the map tells about the label); ``neighbours`` (how many the map
    applied to). Forwards per sample: ``samples`` + 1, plus ``samples`` explanations.
    NaN: only with ``applies="threshold"``, when no neighbour is within it (Quantus 0.6 returns 0 there, which reads
    as "never sufficient" where the estimate is undefined). Neighbours whose prediction flips are what the metric
    counts, not a reason to drop them. Deviation from Quantus 0.6: a per-sample neighbourhood instead of the batch
    (batch-size independent), nearest neighbours or a cosine threshold instead of a threshold on the
    batch-standardised Euclidean distance of batch-max-normalised maps.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sufficiency: samples={samples!r} must be an int >= 1")
    if noise <= 0:
        raise ValueError(f"sufficiency: noise={noise} must be > 0 (sigma as a share of the input range)")
    if applies not in APPLIES:
        raise ValueError(f"sufficiency: unknown applies {applies!r}: use one of {list(APPLIES)}")
    if not 0 < nearest <= 1:
        raise ValueError(f"sufficiency: nearest={nearest} must be a share of the neighbours in (0, 1]")
    if not 0 <= threshold <= 2:
        raise ValueError(f"sufficiency: threshold={threshold} must be a cosine distance in [0, 2]")
    fn = explainer(method, method_params, "sufficiency")
    xs = neighbours(x, seed, samples, noise, low, high)
    rs = explain_stack(fn, model, xs, target, batch_size)
    dist = cosine_distance(rs, attributions).cpu()  # (S, N)
    if applies == "threshold":
        close = (dist <= threshold).numpy()
    else:
        k = max(1, round(nearest * samples))
        order = torch.sort(dist, dim=0, stable=True).indices[:k]
        close = torch.zeros_like(dist, dtype=torch.bool).scatter_(0, order, True).numpy()
    labels = predicted_labels(model, torch.cat([x.unsqueeze(0), xs]), batch_size).cpu().numpy()
    same = labels[1:] == labels[:1]
    count = close.sum(0)
    score = np.where(count > 0, (close & same).sum(0) / np.maximum(count, 1), np.nan)
    agreement = same.mean(0)
    out = pd.concat([scalar_rows(score, "sufficiency"), scalar_rows(agreement, "agreement"),
                     scalar_rows(score - agreement, "sufficiency_gain"),
                     scalar_rows(count.astype(np.float64), "neighbours")], ignore_index=True)
    out["applies"] = applies
    return out
