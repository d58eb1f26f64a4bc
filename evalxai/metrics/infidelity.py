"""Infidelity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS): how badly the map,
read as a linear model of the score, predicts the score change under random perturbations.

    INFD(R, f, x) = E_I [ (I^T R - (f(x) - f(x - I)))^2 ]

Two perturbation distributions of the paper:
- ``square``: a random square of side ``square_size`` is set to the baseline, I = (x - xbar) on the square and 0
  elsewhere ("square removal", a subset of the difference to a baseline);
- ``gaussian``: I ~ N(0, (noise * (high - low))^2) i.i.d. per element (a noisy baseline centred on x, as captum's
  example perturbation).
Which I enters the product with R depends on the kind of map (captum's ``multiply_by_inputs``): a *global*
attribution already carries the input factor (R ~ grad f * (x - xbar): LRP, gradient x input, IG, DeepLIFT), so
with ``multiply_by_inputs`` (default) the product is sum_i I_i / (x_i - xbar_i) R_i (denominator 0 -> 1, as
captum), which for a square removal is the relevance summed over the square; a *local* map (gradient, SmoothGrad)
takes ``multiply_by_inputs=false``: I^T R as written. Gaussian noise divided by x - xbar is unstable where x is near
the baseline: use the Gaussian with local maps.
With ``normalize`` (default, as Yeh et al.'s code and captum's ``normalize=True``) the map is first scaled by the
least-squares factor beta = E[I^T R * df] / E[(I^T R)^2] over the same draws, so the score does not depend on the
map's scale (any positive or negative rescaling gives the same value); a map with I^T R = 0 for every draw gets
beta = 0 (its best scaled version predicts no change): infidelity = E[df^2], never NaN.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import baseline_label, data_range, reference
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import check_patch, require_images
from evalxai.core.seeding import noise_draws, sample_generators
from evalxai.metrics.common import batched_scores, check_score_space, scalar_rows
from evalxai.metrics.registry import Passes, register_metric

PERTURBATIONS = ("square", "gaussian")


def square_masks(x: torch.Tensor, seed: int, samples: int, side: int) -> torch.Tensor:
    """(samples, N, 1, H, W) bool: one random side x side square per draw, its top-left corner uniform over the
    positions that keep it inside the image, drawn from the sample's own generator."""
    n, h, w = len(x), *x.shape[-2:]
    corners = torch.stack([torch.stack([torch.randint(0, h - side + 1, (samples,), generator=g),
                                        torch.randint(0, w - side + 1, (samples,), generator=g)])
                           for g in sample_generators(x, seed + 17)])  # (N, 2, S)
    top, left = corners[:, 0].T.reshape(samples, n, 1, 1), corners[:, 1].T.reshape(samples, n, 1, 1)
    rows = torch.arange(h).view(1, 1, h, 1)
    cols = torch.arange(w).view(1, 1, 1, w)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return inside.unsqueeze(2).to(x.device)


def gaussian_perturbation(x: torch.Tensor, seed: int, draws: Sequence[int] | torch.Tensor,
                          sigma: float) -> torch.Tensor:
    """I for the given draw indices (len(draws), N, ...): sigma * N(0, 1), each draw from the sample's generator."""
    return sigma * noise_draws(x, seed + 17, draws, "normal").to(x.dtype)


@register_metric("infidelity", family="faithfulness", directions={"infidelity": "lower", "beta": "none"},
                 cost=lambda model, x, p: Passes(int(p["samples"]) + 1, 0))
def infidelity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
               perturbation: str = "square", samples: int = 50, square_size: int | None = None, noise: float = 0.1,
               baseline: str | float | torch.Tensor = "zero", multiply_by_inputs: bool = True, normalize: bool = True,
               score_space: str = "logit", seed: int = 0, batch_size: int | None = None,
               mean: float | torch.Tensor | None = None, low: float | torch.Tensor | None = None,
               high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Infidelity: E_I[(I^T R - (f(x) - f(x - I)))^2] over random square removals or Gaussian noise (lower better).

    Yeh et al. 2019 (see the module docstring for the two perturbations and ``normalize``). ``samples`` draws per
    sample, each from the sample's own generator; ``square_size`` None: a quarter of the shorter side (7 px on
    MNIST, 56 at 224); ``noise``: the Gaussian's sigma as a share of the input range (``high`` - ``low``).
    ``multiply_by_inputs``: the map is a global attribution (see the module docstring; false for gradients).
    Rows: ``infidelity`` (lower is better) and ``beta`` (the scale applied; 1 without ``normalize``).
    Forwards per sample: ``samples`` + 1. Never NaN; flipped predictions are kept.
    Deviation from Quantus 0.6: Quantus removes every patch of a fixed grid cumulatively (no random draws, so
    ``n_perturb_samples`` repeats the same computation), always multiplies I by R (a local map's convention) and
    does not normalise.
    """
    check_score_space(score_space)
    require_images(x, "infidelity")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"infidelity: unknown perturbation {perturbation!r}: use one of {list(PERTURBATIONS)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"infidelity: samples={samples!r} must be an int >= 1")
    n = len(x)
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    if perturbation == "square":
        side = max(1, round(min(x.shape[-2:]) / 4)) if square_size is None else int(square_size)
        check_patch(x, side, "square_size")
        masks = square_masks(x, seed, samples, side)

        def perturbation_at(i, j):  # I for draws i..j-1
            return torch.where(masks[i:j], (x - base).unsqueeze(0), torch.zeros((), dtype=x.dtype, device=x.device))
    else:
        if noise <= 0:
            raise ValueError(f"infidelity: noise={noise} must be > 0 (sigma as a share of the input range)")
        lo, hi = data_range(low, high, x)
        sigma = noise * (hi - lo)

        def perturbation_at(i, j):
            return gaussian_perturbation(x, seed, range(i, j), sigma)

    r = attributions.double().reshape(n, -1)
    if multiply_by_inputs:  # I / (x - xbar) . R (captum's safe division: a zero denominator counts as 1)
        diff = (x - base).double().reshape(n, -1)
        r = r / torch.where(diff == 0, torch.ones_like(diff), diff)
    y0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
    chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "infidelity") // n)
    dots, drops = [], []
    for i in chunked(samples, chunk, "infidelity draws"):
        pert = perturbation_at(i, min(i + chunk, samples))  # (s, N, ...)
        y = batched_scores(model, x.unsqueeze(0) - pert, target, score_space, batch_size)
        dots.append((pert.reshape(len(pert), n, -1).double() * r.unsqueeze(0)).sum(-1))
        drops.append(y0.double().unsqueeze(0) - y.double())
    dot, drop = torch.cat(dots).cpu().numpy(), torch.cat(drops).cpu().numpy()  # (S, N)
    if normalize:
        den = (dot ** 2).mean(0)
        beta = np.where(den > 0, (dot * drop).mean(0) / np.where(den > 0, den, 1.0), 0.0)
    else:
        beta = np.ones(n)
    infd = ((beta[None, :] * dot - drop) ** 2).mean(0)
    out = pd.concat([scalar_rows(infd, "infidelity"), scalar_rows(beta, "beta")], ignore_index=True)
    out["score_space"] = score_space
    out["perturbation"] = perturbation
    out["normalize"] = bool(normalize)
    out["multiply_by_inputs"] = bool(multiply_by_inputs)
    out["baseline"] = baseline_label(baseline)
    return out
