"""ROAD: RemOve And Debias (Rong et al. 2022) — removal by noisy linear imputation instead of a constant.

The top (MoRF) or bottom (LeRF) fraction p of pixels (relevance summed over channels) is removed and each removed
pixel is replaced by the weighted mean of its 8 neighbours (weights 1/6 for the 4 direct and 1/12 for the 4
diagonal neighbours, renormalised at the border) — a linear system over all removed pixels at once, so that
the mask's shape leaks as little as possible — plus Gaussian noise of std ``noise``. The system is symmetric
positive definite (a Dirichlet Laplacian) and is solved exactly by batched conjugate gradients: every sample,
fraction and order is one system in one stacked batch. Curves of the score against p, their normalised AUC
(MoRF lower / LeRF higher is better), ROAD-combined = mean_p (LeRF − MoRF) / 2, and per-step correctness.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.memory import budget, chunked, images_per_chunk
from evalxai.core.scoring import require_images
from evalxai.core.seeding import per_sample_noise
from evalxai.metrics.common import check_score_space, curve_rows, normalized_auc, scalar_rows, target_scores
from evalxai.metrics.faithfulness import check_ties, feature_ranks, patch_relevance
from evalxai.metrics.registry import Passes, register_metric

_STENCIL = ((1.0, 2.0, 1.0), (2.0, 0.0, 2.0), (1.0, 2.0, 1.0))


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the 8 neighbours (zero outside the image) of every pixel of (B, H, W): the kernel
    [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12.

    Large float32 batches use a depthwise convolution (each image its own channel: 2x faster than shifted adds
    on the CPU, where a one-channel convolution is 10x slower); otherwise the separable [1, 2, 1] x [1, 2, 1]
    minus the centre, as shifted adds into one buffer."""
    if v.dtype == torch.float32 and len(v) >= 64:
        k = (v.new_tensor(_STENCIL) / 12).expand(len(v), 1, 3, 3)
        return F.conv2d(v.unsqueeze(0), k, padding=1, groups=len(v)).squeeze(0)
    p = F.pad(v, (1, 1, 1, 1))
    rows = p[:, :-2] + p[:, 2:]
    rows.add_(p[:, 1:-1], alpha=2)
    out = rows[..., :-2] + rows[..., 2:]
    out.add_(rows[..., 1:-1], alpha=2)
    return out.sub_(v, alpha=4).div_(12)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def linear_imputation(x: torch.Tensor, missing: torch.Tensor, iters: int = 1000, tol: float | None = None
                      ) -> torch.Tensor:
    """Fill ``missing`` pixels of images (B, C, H, W) so that each equals the weighted mean of its neighbours.

    Solves (D − K) u = K x_known on the missing set (D: the neighbour-weight sums) by conjugate gradients,
    batched over images and channels, in the dtype of x, to a relative residual ``tol`` (default 1e-5 in float32,
    1e-10 in float64); known pixels are kept. Systems that have converged leave the batch every few iterations
    (few missing pixels converge in a handful of steps, large holes take ~100).
    """
    if tol is None:
        tol = 1e-10 if x.dtype == torch.float64 else 1e-5
    b, c, h, w = x.shape
    m = missing.expand(b, c, h, w).reshape(b * c, h, w).to(x.dtype)
    known = x.reshape(b * c, h, w) * (1 - m)
    md = m * _neighbours(torch.ones(1, h, w, dtype=x.dtype, device=x.device))  # D on the missing set
    rhs = m * _neighbours(known)
    u = torch.zeros_like(rhs)  # the solution of every system; ``ua`` holds those still iterating
    ua, r, p = torch.zeros_like(rhs), rhs.clone(), rhs.clone()
    rr = _dot(r, r)
    stop = tol * tol * rr.clamp(min=1e-30)
    active = torch.arange(len(rhs), device=x.device)
    mask = m
    for it in range(iters):
        done = rr <= stop
        if bool(done.all()):
            break
        if it % 8 == 0 and bool(done.any()):  # drop converged systems: write their solution, shrink the batch
            u[active] = ua
            keep = (~done).nonzero().squeeze(1)
            active, ua, r, p, rr, stop, m, md = (t[keep] for t in (active, ua, r, p, rr, stop, m, md))
        ap = torch.mul(md, p).sub_(_neighbours(p).mul_(m))
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap.clamp(min=1e-300), torch.zeros_like(rr)).view(-1, 1, 1)
        ua.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp(min=1e-300), torch.zeros_like(rr))
        p.mul_(beta.view(-1, 1, 1)).add_(r)
        rr = rr_new
    u[active] = ua
    return (known + mask * u).view(b, c, h, w)


def _cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """One forward per order and fraction, and one of x for every order."""
    orders = [p["order"]] if isinstance(p["order"], str) else list(p["order"])
    return Passes(len(orders) * len(p["fractions"]) + 1, 0)


@register_metric("road", family="faithfulness", cost=_cost,
                 directions={"auc_morf": "lower", "auc_lerf": "higher", "auc_random": "none", "road_combined": "higher",
                             "curve_*": "none", "correct_*": "none"})
def road(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
         order: str | tuple[str, ...] = ("morf", "lerf"),
         fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
         0.8, 0.9), noise: float = 0.01,
         score_space: str = "softmax", seed: int = 0, batch_size: int | None = None,
         ties: str = "random") -> pd.DataFrame:
    """ROAD curves (score vs fraction removed by noisy linear imputation), AUCs, ROAD-combined, correctness; ties
    in relevance broken at random per sample (``ties``, recorded)."""
    check_score_space(score_space)
    require_images(x, "road")
    fr = [float(f) for f in fractions]
    if not fr or any(not 0.0 < f <= 1.0 for f in fr) or sorted(fr) != fr:
        raise ValueError(f"fractions={list(fractions)} must be increasing values in (0, 1]")
    if noise < 0:
        raise ValueError(f"noise={noise} is negative: it is the std of the Gaussian added to imputed pixels")
    check_ties(ties)
    orders = [order] if isinstance(order, str) else list(order)
    n, (h, w) = len(x), x.shape[-2:]
    rel, _ = patch_relevance(attributions, 1)
    eps = per_sample_noise(x, seed + 31337, len(fr)) * noise  # (F, N, C, H, W), the same draws for every order
    counts = torch.tensor([round(f * h * w) for f in fr], device=x.device)
    frac = torch.tensor([0.0, *fr], dtype=torch.float64)
    frames, curves, clean = [], {}, None
    for o in orders:
        ranks = feature_ranks(rel, o, seed, x, ties)  # (N, H*W)
        missing = (ranks.unsqueeze(0) < counts.view(-1, 1, 1)).view(len(fr), n, 1, h, w)
        flat_missing = missing.reshape(-1, 1, h, w)
        flat_x = x.unsqueeze(0).expand(len(fr), *x.shape).reshape(-1, *x.shape[1:])
        # the solver keeps ~8 image-sized buffers per system: chunks of whole systems within the budget
        per = max(1, budget(x.device) // max(1, 8 * x[0].numel() * x.element_size()))
        imputed = torch.cat([linear_imputation(flat_x[i:i + per], flat_missing[i:i + per])
                             for i in chunked(len(flat_x), per, f"road {o} imputation")])
        imputed = imputed + flat_missing * eps.reshape(-1, *x.shape[1:])
        tgt = target.repeat(len(fr) + 1)
        step = images_per_chunk(model, x, "forward", batch_size, "road")
        with torch.no_grad():
            if clean is None:  # the unperturbed point of every curve: one forward for all orders
                clean = torch.cat([model(x[i:i + step]) for i in range(0, n, step)])
            logits = torch.cat([clean, *(model(imputed[i:i + step]) for i in range(0, len(imputed), step))])
        y = target_scores(logits, tgt, score_space).view(len(fr) + 1, n)
        correct = (logits.argmax(1) == tgt).double().view(len(fr) + 1, n)
        curves[o] = y
        frames += [curve_rows(y, frac, f"curve_{o}", order=o), curve_rows(correct, frac, f"correct_{o}", order=o),
                   scalar_rows(normalized_auc(y, frac), f"auc_{o}", order=o)]
    if "morf" in curves and "lerf" in curves:
        combined = ((curves["lerf"][1:] - curves["morf"][1:]) / 2).double().mean(0)
        frames.append(scalar_rows(combined, "road_combined", order="lerf-morf"))
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    out["ties"] = ties
    return out
