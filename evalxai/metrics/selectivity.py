"""Selectivity (Montavon, Samek & Müller 2018, §7.2): remove the most relevant patch, re-explain, repeat.

At each step the relevance is recomputed on the perturbed input (``recompute=True``, as in the paper and the
Understanding-NN tutorial; Quantus does not), the most relevant patch not yet removed (non-overlapping
``patch_size`` grid, relevance summed over the patch and channels) is set to the baseline, and the target score
is recorded. A steep fall means the explanation finds the evidence: the normalised AUC is lower-is-better.
The loop runs over steps (each needs the previous explanation), never over samples: every step explains and
perturbs the whole batch, and the K + 1 perturbed inputs are scored in stacked batches at the end.
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import baseline_label, reference
from evalxai.core.memory import chunked
from evalxai.core.scoring import check_patch, require_images
from evalxai.metrics.common import batched_scores, check_score_space, curve_rows, explainer, normalized_auc, scalar_rows
from evalxai.metrics.faithfulness import (
    default_patch,
    inverse_permutation,
    patch_count,
    patch_mask,
    patch_relevance,
    tie_order,
)
from evalxai.metrics.registry import Passes, register_metric


def _cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """K + 1 forwards (the unperturbed input and every step); K - 1 explains with ``recompute`` (step 1 uses the
    given map)."""
    patch_size = default_patch(x, 7) if p["patch_size"] is None else p["patch_size"]
    k_max = patch_count(x, check_patch(x, patch_size)) if p["steps"] is None else int(p["steps"])
    return Passes(k_max + 1, k_max - 1 if p["recompute"] else 0)


@register_metric("selectivity", family="faithfulness", directions={"auc": "lower", "curve": "none"}, needs=("method",),
                 cost=_cost)
def selectivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                patch_size: int | None = None, steps: int = 20, baseline: str | float | torch.Tensor = "zero",
                score_space: str = "logit", recompute: bool = True, method: str | Callable | dict | None = None,
                method_params: dict | None = None, seed: int = 0, batch_size: int | None = None,
                mean: float | torch.Tensor | None = None, low: float | torch.Tensor | None = None,
                high: float | torch.Tensor | None = None, ties: str = "random") -> pd.DataFrame:
    """Selectivity curve (score after each most-relevant-patch removal, relevance recomputed) and its AUC; among
    equally relevant patches the one first in ``tie_order`` (random per sample by default) goes first."""
    check_score_space(score_space)
    require_images(x, "selectivity")
    h, w = x.shape[-2:]
    patch_size = default_patch(x, 7) if patch_size is None else patch_size  # 4 px on MNIST, 32 on 224 x 224
    check_patch(x, patch_size)
    fn = explainer(method, method_params, "selectivity") if recompute else None
    rel, grid = patch_relevance(attributions, patch_size)
    n, n_feat = rel.shape
    k_max = n_feat if steps is None else int(steps)
    if not 1 <= k_max <= n_feat:
        raise ValueError(f"steps={steps} must be between 1 and the number of patches {n_feat}")
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    removed = torch.zeros(n, n_feat, dtype=torch.bool, device=x.device)
    rows = torch.arange(n, device=x.device)
    position = inverse_permutation(tie_order(x, n_feat, ties, seed))
    inputs = [x]
    current = x
    for k in chunked(k_max, 1, "selectivity steps"):
        if k > 0 and recompute:
            rel, _ = patch_relevance(fn(model, current, target).detach(), patch_size)
        avail = rel.masked_fill(removed, float("-inf"))
        top = avail == avail.amax(1, keepdim=True)
        pick = position.masked_fill(~top, n_feat).argmin(1)  # the first of the most relevant in tie order
        removed[rows, pick] = True
        current = torch.where(patch_mask(removed, grid, patch_size, (h, w)), base, x)
        inputs.append(current)
    y = batched_scores(model, torch.stack(inputs), target, score_space, batch_size)
    frac = torch.arange(k_max + 1, dtype=torch.float64) / n_feat
    out = pd.concat([curve_rows(y, frac, "curve"), scalar_rows(normalized_auc(y, frac), "auc")],
                    ignore_index=True)
    out["score_space"] = score_space
    out["ties"] = ties
    out["baseline"] = baseline_label(baseline)
    return out
