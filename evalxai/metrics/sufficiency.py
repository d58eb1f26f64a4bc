"""Sufficiency (Dasgupta, Frost & Moshkovitz 2022, "Framework for evaluating faithfulness of local explanations",
ICML): an explanation is sufficient when the inputs it also explains get the same prediction.

The paper's local sufficiency of x is Pr_{x' ~ mu}[f(x') = f(x) | e(x) applies to x'], estimated from samples of
the data distribution mu. Quantus 0.6 estimates it within the batch being scored (the other samples of the batch
whose maps lie within a threshold distance), so a sample's score depends on which samples share its batch and on a
batch-wide normalisation of the distances. evalxai keeps the definition and changes the sample of mu, so that the
score belongs to the sample alone: mu is the neighbourhood of x, ``samples`` noisy copies
x'_s = x + N(0, (noise * (high - low))^2) (clipped into [low, high] when the bounds are given), each re-explained
with the run's method; "e(x) applies to x'" means the maps are close, cosine distance d(R(x), R(x')) <= ``threshold``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from evalxai.memory import chunked, images_per_chunk
from evalxai.metrics.common import explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import register_metric
from evalxai.seeding import per_sample_noise


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


def neighbours(x: torch.Tensor, seed: int, samples: int, noise: float, low=None, high=None) -> torch.Tensor:
    """(samples, N, ...) noisy copies x + N(0, (noise * (high - low))^2), drawn per sample, clipped into [low, high]
    when the bounds are given (range 1 when they are not)."""
    lo = None if low is None else torch.as_tensor(low, dtype=x.dtype, device=x.device)
    hi = None if high is None else torch.as_tensor(high, dtype=x.dtype, device=x.device)
    span = (1.0 if hi is None else hi) - (0.0 if lo is None else lo)
    xs = x.unsqueeze(0) + noise * span * per_sample_noise(x, seed + 5, samples, "normal").to(x.dtype)
    return torch.clamp(xs, lo, hi) if lo is not None or hi is not None else xs


@torch.no_grad()
def predicted_labels(model, xs: torch.Tensor, batch_size=None) -> torch.Tensor:
    """argmax of the logits for a stack (S, N, ...) -> (S, N), in chunks of the memory budget."""
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    step = images_per_chunk(model, flat, "forward", batch_size, "sufficiency labels")
    return torch.cat([model(flat[i:i + step]).argmax(1) for i in chunked(len(flat), step, "labels")]).view(s, n)


@register_metric("sufficiency", samples=20, noise=0.1, threshold=0.5, seed=0, method=None, method_params=None,
                 batch_size=None, low=None, high=None)
def sufficiency(model, x, target, attributions, samples=20, noise=0.1, threshold=0.5, seed=0, method=None,
                method_params=None, batch_size=None, low=None, high=None):
    """Sufficiency: share of noisy neighbours with a similar map (cosine distance <= threshold) that keep the label.

    Dasgupta et al. 2022, per sample against ``samples`` perturbed neighbours (see the module docstring): among the
    neighbours x' whose map R(x') (re-explained for the same target) is within ``threshold`` cosine distance of R(x),
    the share with argmax f(x') = argmax f(x). Higher is better. Rows: ``sufficiency``, ``neighbours`` (how many
    neighbours the map applied to) and ``agreement`` (the share of all neighbours that keep the label: the base rate
    sufficiency should be read against; both direction none). Forwards per sample: ``samples`` + 1, plus ``samples``
    explanations. NaN: no neighbour within the threshold (Quantus 0.6 returns 0 there, which reads as "never
    sufficient" when the estimate is undefined). Flipped predictions are what the metric counts, not a reason to drop.
    Deviation from Quantus 0.6: a per-sample neighbourhood instead of the batch (batch-size independent), cosine
    distance instead of the batch-standardised Euclidean distance of max-normalised maps.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sufficiency: samples={samples!r} must be an int >= 1")
    if noise <= 0:
        raise ValueError(f"sufficiency: noise={noise} must be > 0 (sigma as a share of the input range)")
    if not 0 <= threshold <= 2:
        raise ValueError(f"sufficiency: threshold={threshold} must be a cosine distance in [0, 2]")
    fn = explainer(method, method_params, "sufficiency")
    xs = neighbours(x, seed, samples, noise, low, high)
    rs = explain_stack(fn, model, xs, target, batch_size)
    close = (cosine_distance(rs, attributions) <= threshold).cpu().numpy()  # (S, N)
    labels = predicted_labels(model, torch.cat([x.unsqueeze(0), xs]), batch_size).cpu().numpy()
    same = labels[1:] == labels[:1]
    count = close.sum(0)
    score = np.where(count > 0, (close & same).sum(0) / np.maximum(count, 1), np.nan)
    out = pd.concat([scalar_rows(score, "sufficiency", "higher"),
                     scalar_rows(count.astype(np.float64), "neighbours", "none"),
                     scalar_rows(same.mean(0), "agreement", "none")], ignore_index=True)
    out["threshold"] = float(threshold)
    return out
