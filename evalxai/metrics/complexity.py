"""Complexity of a map: how many features it spreads its relevance over.

- ``sparseness``: Gini index of |R| (Chalasani et al. 2020, "Concise explanations of neural networks using
  adversarial training"; Hurley & Rickard 2009), higher = sparser.
- ``complexity``: Shannon entropy of the fractional contributions |R_i| / sum_j |R_j| (Bhatt, Weller & Moura 2020,
  "Evaluating and aggregating feature-based model explanations", IJCAI), lower = simpler.
- ``effective_complexity``: number of features with |R_i| > eps max_j |R_j| (Nguyen & Martinez 2020, "On
  quantitative aspects of model interpretability"), lower = simpler.

Features are the elements of the map (every channel of every pixel), as the map is given; all three are computed in
float64 and do not change when the map is multiplied by a positive (or negative) number.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from evalxai.core.sorting import sorted_rows
from evalxai.metrics.common import scalar_rows
from evalxai.metrics.registry import no_passes, register_metric


def gini(values: torch.Tensor) -> torch.Tensor:
    """Gini index per row of non-negative values (N, D): sum_k (2k - D - 1) a_(k) / (D sum a), a sorted ascending."""
    a = sorted_rows(values).double()  # sorted, then widened: the same order
    d = a.shape[1]
    k = torch.arange(1, d + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * k - d - 1) * a).sum(1) / (d * total.clamp(min=1e-300))
    return torch.where(total > 0, g, torch.zeros_like(g))


def entropy(values: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (natural log) per row of non-negative values (N, D) taken as weights: -sum_i p_i log p_i with
    p_i = a_i / sum_j a_j (0 log 0 = 0); NaN for an all-zero row (no distribution)."""
    a = values.double()
    total = a.sum(1, keepdim=True)
    p = a / total.clamp(min=1e-300)
    h = -torch.xlogy(p, p).sum(1)
    return torch.where(total.squeeze(1) > 0, h, torch.full_like(h, float("nan")))


@register_metric("sparseness", family="complexity", cost=no_passes, directions={"gini": "higher"})
def sparseness(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor) -> pd.DataFrame:
    """Gini index of the absolute attributions per sample (higher = sparser)."""
    return scalar_rows(gini(attributions.reshape(len(x), -1).abs()), "gini")


@register_metric("complexity", family="complexity", cost=no_passes, directions={"entropy": "lower"})
def complexity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor) -> pd.DataFrame:
    """Entropy of the fractional contributions: -sum_i p_i log p_i, p_i = |R_i| / sum_j |R_j| (Bhatt et al. 2020).

    Natural log over every element of the map: 0 when one feature holds all relevance, log(D) for a uniform map of D
    elements (lower = simpler). NaN for an all-zero map (no fractional contributions)."""
    return scalar_rows(entropy(attributions.reshape(len(x), -1).abs()), "entropy")


@register_metric("effective_complexity", family="complexity",
                 cost=no_passes, directions={"effective_complexity": "lower"})
def effective_complexity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                         eps: float = 1e-5) -> pd.DataFrame:
    """Number of elements with |R_i| > eps * max_j |R_j| per sample (Nguyen & Martinez 2020; lower = simpler).

    ``eps`` is relative to the sample's largest absolute relevance, so the count does not depend on the map's scale
    (Quantus's EffectiveComplexity applies eps to the map after its default normalisation by the maximum, which is the
    same scale). An all-zero map counts 0."""
    if not 0 <= eps < 1:
        raise ValueError(f"effective_complexity: eps={eps} must be in [0, 1) (a fraction of the sample's largest "
                         "|relevance|); use e.g. eps=1e-5")
    a = attributions.reshape(len(x), -1).abs().double()
    peak = a.max(1, keepdim=True).values
    count = ((a > eps * peak) & (peak > 0)).sum(1)
    return scalar_rows(count.double(), "effective_complexity")
