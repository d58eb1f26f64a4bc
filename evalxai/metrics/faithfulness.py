"""Faithfulness: pixel flipping / region perturbation (Bach 2015; Samek 2017).

Features (pixels, or p x p patches whose relevance is the sum over the patch and the channels) are removed
in MoRF, LeRF or random order, ``per_step`` per step, by replacing them with a baseline; the curve
y_0..y_K of the target score is recorded. All K + 1 perturbed copies are stacked into the batch dimension
and forwarded in chunks — no per-sample or per-step Python loop over the model.
Scalars: AOPC = mean_k (y_0 - y_k) (Samek 2017), normalised AUC of y over the removed fraction, and
ABPC = mean_k (y_lerf,k - y_morf,k) when both orders run.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.baselines import baseline_label, gaussian_blur, reference
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import check_patch, require_images
from evalxai.core.seeding import per_sample_permutations
from evalxai.core.sorting import sort_rows
from evalxai.metrics.common import batched_scores, check_score_space, curve_rows, normalized_auc, scalar_rows
from evalxai.metrics.registry import Passes, register_metric

ORDERS = ("morf", "lerf", "random")
# pixel flipping's measures (also region perturbation's): removing the most relevant first should drop the score
# fast (AOPC high, AUC low), the least relevant first slowly; a random order is the reference, with no direction
DIRECTIONS = {"aopc_morf": "higher", "auc_morf": "lower", "aopc_lerf": "lower", "auc_lerf": "higher",
              "aopc_random": "none", "auc_random": "none", "abpc": "higher", "curve_*": "none"}


def patch_relevance(attributions: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sum of relevance over channels and p x p patches: (N, P) and the patch grid (Hp, Wp)."""
    h, w = attributions.shape[-2:]
    p = patch_size
    rel = attributions.sum(1, keepdim=True)
    hp, wp = math.ceil(h / p), math.ceil(w / p)
    rel = F.pad(rel, (0, wp * p - w, 0, hp * p - h))
    return (F.avg_pool2d(rel, p) * p * p).flatten(1), (hp, wp)


def patch_mask(removed: torch.Tensor, grid: tuple[int, int], patch_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (..., 1, H, W) from a patch mask (..., Hp * Wp)."""
    mask = removed.view(*removed.shape[:-1], 1, *grid)
    d = mask.dim()
    return mask.repeat_interleave(patch_size, d - 2).repeat_interleave(patch_size, d - 1)[..., :size[0], :size[1]]


TIES = ("random", "raster")


def check_ties(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"unknown ties '{ties}': use one of {list(TIES)}")
    return ties


def tie_order(x: torch.Tensor, n_features: int, ties: str, seed: int) -> torch.Tensor:
    """(N, P) order in which features of equal relevance are taken: a random permutation per sample (seeded by
    the sample, ``ties="random"``) or raster order (``"raster"``: row by row, what a stable sort gives)."""
    if check_ties(ties) == "random":
        return per_sample_permutations(x, seed + 7, n_features)
    return torch.arange(n_features, device=x.device).expand(len(x), n_features)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """pos[n, perm[n, i]] = i: the position of each feature in the order ``perm`` (N, P)."""
    n, p = perm.shape
    return torch.empty_like(perm).scatter_(1, perm, torch.arange(p, device=perm.device).expand(n, p).contiguous())


def feature_ranks(rel: torch.Tensor, order: str, seed: int, x: torch.Tensor, ties: str = "random") -> torch.Tensor:
    """rank[n, f] = position of feature f in the removal order of sample n.

    Equal relevances (common: most input-multiplied relevances of MNIST are exactly 0) are taken in
    ``tie_order``: with raster order, "least relevant first" would remove the top rows first."""
    p = rel.shape[1]
    if order == "random":
        idx = per_sample_permutations(x, seed + 104729, p).to(rel.device)
    elif order in ("morf", "lerf"):
        perm = tie_order(x, p, ties, seed).to(rel.device)
        key = rel.gather(1, perm)
        idx = perm.gather(1, sort_rows(-key if order == "morf" else key)[1].to(perm.device))
    else:
        raise ValueError(f"unknown order '{order}': use one of {list(ORDERS)}")
    return inverse_permutation(idx)


MAX_STEPS = 50  # default number of removal steps, whatever the resolution


def default_patch(x: torch.Tensor, per_side: int) -> int:
    """A patch side that fits the image: about ``per_side`` patches along the shorter side (at least 1 pixel)."""
    return max(1, round(min(x.shape[-2:]) / per_side))


def removal_steps(n_feat: int, per_step: int | None, steps: int | None) -> tuple[int, int]:
    """(per_step, K): features removed per step and the number of steps K of a curve over ``n_feat`` features
    (``flip_curves``'s defaults: ``per_step`` None removes ceil(P / ``steps``) per step, ``steps`` None then means
    ``MAX_STEPS``; with a given ``per_step``, enough steps to remove every feature)."""
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if per_step is None:
        per_step = max(1, math.ceil(n_feat / (MAX_STEPS if steps is None else int(steps))))
    if per_step < 1:
        raise ValueError(f"per_step={per_step} must be >= 1")
    k_max = math.ceil(n_feat / per_step) if steps is None else int(steps)
    if k_max < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    return per_step, k_max


def patch_count(x: torch.Tensor, patch_size: int) -> int:
    """Number of p x p patches of the grid over the images of x (the last row and column may be partial)."""
    h, w = x.shape[-2:]
    return math.ceil(h / patch_size) * math.ceil(w / patch_size)


def flip_steps(x: torch.Tensor, patch_size: int | None, per_step: int | None, steps: int | None) -> int:
    """K, the removal steps of one ``flip_curves`` order on images shaped like x (K + 1 forwards per image)."""
    patch_size = default_patch(x, 28) if patch_size is None else patch_size
    return removal_steps(patch_count(x, check_patch(x, patch_size)), per_step, steps)[1]


def _orders(order: str | tuple[str, ...]) -> list[str]:
    return [order] if isinstance(order, str) else list(order)


def _flip_cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """K + 1 forwards per order (the unperturbed input and every removal step)."""
    return Passes(len(_orders(p["order"])) * (flip_steps(x, p["patch_size"], p["per_step"], p["steps"]) + 1), 0)


def flip_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                order: str = "morf", patch_size: int | None = None, per_step: int | None = None,
                steps: int | None = None, baseline: str | float | torch.Tensor = "zero", score_space: str = "logit",
                seed: int = 0, batch_size: int | None = None, mean: float | torch.Tensor | None = None,
                low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
                ties: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Curves y (K + 1, N) and removed fractions (K + 1,) for one order.

    Defaults that scale with the image: ``patch_size`` None gives about 28 patches along the shorter side
    (1 pixel on MNIST, 8 on 224 x 224), ``per_step`` None removes ceil(P / ``steps``) of the P patches per step,
    ``steps`` None then means ``MAX_STEPS`` (with a given ``per_step``: enough steps to remove every patch)."""
    require_images(x, "pixel flipping")
    h, w = x.shape[-2:]
    patch_size = default_patch(x, 28) if patch_size is None else patch_size
    check_patch(x, patch_size)
    check_ties(ties)
    rel, (hp, wp) = patch_relevance(attributions, patch_size)
    n_feat = rel.shape[1]
    per_step, k_max = removal_steps(n_feat, per_step, steps)
    ranks = feature_ranks(rel, order, seed, x, ties)
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    removed = torch.clamp(torch.arange(k_max + 1, device=x.device) * per_step, max=n_feat)
    n = len(x)
    chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "pixel flipping") // n)  # steps at a time
    curves = []
    for i in chunked(k_max + 1, chunk, f"{order} removal steps"):
        r = removed[i:i + chunk]
        mask = patch_mask(ranks.unsqueeze(0) < r.view(-1, 1, 1), (hp, wp), patch_size, (h, w))
        xs = torch.where(mask, base.unsqueeze(0), x.unsqueeze(0))
        curves.append(batched_scores(model, xs, target, score_space, batch_size))
    return torch.cat(curves), removed.cpu().double() / n_feat


@register_metric("pixel_flipping", family="faithfulness", directions=DIRECTIONS, cost=_flip_cost)
def pixel_flipping(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                   order: str | tuple[str, ...] = ("morf", "lerf"), patch_size: int | None = None,
                   per_step: int | None = None, steps: int | None = None, baseline: str | float | torch.Tensor = "zero",
                   score_space: str = "logit", seed: int = 0, batch_size: int | None = None,
                   mean: float | torch.Tensor | None = None, low: float | torch.Tensor | None = None,
                   high: float | torch.Tensor | None = None, ties: str = "random") -> pd.DataFrame:
    """Pixel-flipping curves and AOPC / AUC (per order) and ABPC (when MoRF and LeRF both run); ties in relevance
    are broken at random per sample (``ties``, recorded in the table); ``baseline`` as in ``evalxai.core.baselines``."""
    check_score_space(score_space)
    orders = _orders(order)
    params = dict(patch_size=patch_size, per_step=per_step, steps=steps, baseline=baseline, seed=seed,
                  batch_size=batch_size, mean=mean, low=low, high=high, ties=ties)
    frames, curves = [], {}
    for o in orders:
        y, frac = flip_curves(model, x, target, attributions, order=o, score_space=score_space, **params)
        curves[o] = y
        frames.append(curve_rows(y, frac, f"curve_{o}", order=o))
        yn = y.double().cpu().numpy()
        aopc = (yn[:1] - yn).mean(0)
        auc = normalized_auc(y, frac)
        frames.append(scalar_rows(aopc, f"aopc_{o}", order=o))
        frames.append(scalar_rows(auc, f"auc_{o}", order=o))
    if "morf" in curves and "lerf" in curves:
        abpc = (curves["lerf"] - curves["morf"]).double().mean(0)
        frames.append(scalar_rows(abpc, "abpc", order="lerf-morf"))
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    out["ties"] = ties
    out["baseline"] = baseline_label(baseline)
    return out


@register_metric("insertion_deletion", family="faithfulness",
                 directions={"auc_deletion": "lower", "auc_insertion": "higher", "curve_*": "none"},
                 cost=lambda model, x, p: Passes(2 * (flip_steps(x, p["patch_size"], p["per_step"], p["steps"]) + 1),
                                                 0))
def insertion_deletion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       patch_size: int | None = None, per_step: int | None = None, steps: int | None = None,
                       score_space: str = "softmax", blur_sigma: float = 5.0, blur_radius: int = 5,
                       batch_size: int | None = None, seed: int = 0, ties: str = "random",
                       low: float | torch.Tensor | None = None) -> pd.DataFrame:
    """RISE deletion (MoRF to black, lower AUC better) and insertion (MoRF from a blurred canvas, higher better).

    Petsiuk et al. 2018: features are deleted from x (set to black: ``low``, see ``evalxai.core.baselines``), or
    inserted into the blurred image (Gaussian, sigma 5, 11 taps), most relevant first, ``per_step`` at a time
    (default: as pixel flipping, ``MAX_STEPS`` steps whatever the resolution; RISE itself took 224 pixels per step
    on 224 x 224 images); the score (softmax by default) is integrated over the fraction changed.
    """
    check_score_space(score_space)
    require_images(x, "insertion_deletion")
    common = dict(order="morf", patch_size=patch_size, per_step=per_step, steps=steps, score_space=score_space,
                  batch_size=batch_size, seed=seed, ties=ties)
    y_del, frac = flip_curves(model, x, target, attributions, baseline="zero", low=low, **common)
    canvas = gaussian_blur(x, blur_sigma, blur_radius)
    y_ins, _ = flip_curves(model, canvas, target, attributions, baseline=x, **common)
    out = pd.concat([curve_rows(y_del, frac, "curve_deletion"), curve_rows(y_ins, frac, "curve_insertion"),
                     scalar_rows(normalized_auc(y_del, frac), "auc_deletion"),
                     scalar_rows(normalized_auc(y_ins, frac), "auc_insertion")], ignore_index=True)
    out["score_space"] = score_space
    out["ties"] = ties
    return out


REGION_SIDE = 9 / 224  # Samek et al. 2017: 9 x 9 regions on 224 x 224 ImageNet images


def region_settings(x: torch.Tensor, patch_size: int | None, per_step: int | None,
                    steps: int | None) -> tuple[int, int | None]:
    """(patch side, steps) of ``region_perturbation`` on images shaped like x: the side proportionate to Samek et
    al.'s 9 px at 224 when None, and no steps past the last region."""
    if patch_size is None:
        patch_size = max(1, round(min(x.shape[-2:]) * REGION_SIDE))
    check_patch(x, patch_size)
    if steps is not None and per_step is not None and per_step >= 1:
        steps = min(int(steps), math.ceil(patch_count(x, patch_size) / per_step))
    return patch_size, steps


def _region_cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    patch_size, steps = region_settings(x, p["patch_size"], p["per_step"], p["steps"])
    return _flip_cost(model, x, {**p, "patch_size": patch_size, "steps": steps})


@register_metric("region_perturbation", family="faithfulness", directions=DIRECTIONS, cost=_region_cost)
def region_perturbation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                        order: str = "morf", patch_size: int | None = None, per_step: int = 1, steps: int = 100,
                        baseline: str | float | torch.Tensor = "uniform", score_space: str = "logit", seed: int = 0,
                        batch_size: int | None = None, mean: float | torch.Tensor | None = None,
                        low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
                        ties: str = "random") -> pd.DataFrame:
    """Region perturbation (Samek et al. 2017): ``pixel_flipping`` with square regions, under its own name and defaults.

    An alias of ``pixel_flipping`` (same rows: curve, AOPC, AUC) with the region-perturbation settings of Samek,
    Binder, Montavon, Lapuschkin & Mueller 2017 ("Evaluating the visualization of what a deep neural network has
    learned", IEEE TNNLS): MoRF, one region per step for L = ``steps`` = 100 steps (fewer when the image has fewer
    regions), regions replaced by uniform noise in [low, high] (drawn once per sample), region side proportionate
    to the paper's 9 px on 224 x 224 images (``patch_size`` None: round(9 / 224 of the shorter side), at least 1 px:
    1 px on MNIST, 9 at 224). Regions are a fixed non-overlapping grid (as Quantus's RegionPerturbation);
    AOPC = mean_{k=0..L} (y_0 - y_k) as the paper. Quantus 0.6 returns the drop curve without the k = 0 term.
    """
    require_images(x, "region_perturbation")
    patch_size, steps = region_settings(x, patch_size, per_step, steps)
    return pixel_flipping(model, x, target, attributions, order=order, patch_size=patch_size, per_step=per_step,
                          steps=steps, baseline=baseline, score_space=score_space, seed=seed, batch_size=batch_size,
                          mean=mean, low=low, high=high, ties=ties)
