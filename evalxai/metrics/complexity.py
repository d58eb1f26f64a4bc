"""Complexity: sparseness as the Gini index of |R| (Chalasani et al. 2020; Hurley & Rickard 2009)."""
from __future__ import annotations

import torch

from evalxai.metrics.common import scalar_rows
from evalxai.metrics.registry import register_metric


def gini(values: torch.Tensor) -> torch.Tensor:
    """Gini index per row of non-negative values (N, D): sum_k (2k - D - 1) a_(k) / (D sum a), a sorted ascending."""
    a = torch.sort(values.double(), dim=1).values
    d = a.shape[1]
    k = torch.arange(1, d + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * k - d - 1) * a).sum(1) / (d * total.clamp(min=1e-300))
    return torch.where(total > 0, g, torch.zeros_like(g))


@register_metric("sparseness")
def sparseness(model, x, target, attributions):
    """Gini index of the absolute attributions per sample (higher = sparser)."""
    return scalar_rows(gini(attributions.reshape(len(x), -1).abs()), "gini", "higher")
