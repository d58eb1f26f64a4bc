"""Localisation: does the map point at the pixels that carry the class? Scores against ground-truth masks.

Every metric here takes ``masks``: a boolean tensor (N, H, W) aligned with x (N, C, H, W) (the pipeline passes the
dataset's ``masks_test``; ``evalxai.score(..., masks=m)`` passes the user's). The map is first pooled over channels
into one value per pixel, in float64: the signed channel sum r = sum_c R_c for all metrics but the two of XAI-TRIS,
which pool sum_c |R_c| as their paper does. r+ = max(r, 0) is the positive part.

Ties. Rank-based scores (pointing game, top-k, rank accuracy, XAI-TRIS precision) count pixels tied with the last
selected value by their expected share, i.e. the mean of the score over every order of the tied pixels (what
evalxai's ``ties="random"`` gives on average, computed exactly): a constant map scores chance level, whatever the
pixel order. Quantus takes numpy's argsort order among ties (raster order), so a constant map scores by where the
mask lies; its pointing game even counts a hit if any tied maximum lies in the mask (a constant map scores 1).

Every score is per sample and does not depend on the batch; empty masks give NaN everywhere (and so does a mask that
leaves no pixel outside it, for the ROC-AUC).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.sorting import sort_rows, sorted_rows
from evalxai.core.validate import check_masks
from evalxai.metrics.common import UNSET, scalar_rows
from evalxai.metrics.registry import no_passes, register_metric


def channel_sum(attributions: torch.Tensor) -> torch.Tensor:
    """sum_c R_c per pixel, float64 (N, H, W)."""
    return attributions.detach().double().sum(1)


def abs_channel_sum(attributions: torch.Tensor) -> torch.Tensor:
    """sum_c |R_c| per pixel, float64 (N, H, W)."""
    return attributions.detach().double().abs().sum(1)


def _nan_where(values: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    return torch.where(bad, torch.full_like(values, float("nan")), values)


def _share(r: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """sum_{region} r+ / sum r+ per sample (N,); NaN where the map has no positive relevance."""
    pos = r.clamp(min=0).flatten(1)
    total = pos.sum(1)
    inside = (pos * region.flatten(1)).sum(1)
    return _nan_where(inside / torch.where(total > 0, total, torch.ones_like(total)), total <= 0)


def above_and_tied(r: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r > the k-th largest value of its row, r == it) per row of r (N, P), k (N,) in 1..P (k = 0 reads the
    largest): the elements every top-k holds and those among which the top-k picks the rest."""
    kth = sorted_rows(r, descending=True).gather(1, (k - 1).clamp(min=0).unsqueeze(1))
    return r > kth, r == kth


def expected_top_k_hits(r: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Expected |top-k(r) ∩ m| per row when ties are broken uniformly at random (exact, no sampling).

    r (N, P) float, m (N, P) bool, k (N,) int in 0..P. Pixels above the k-th largest value all count; of the pixels
    equal to it, the k - #above still to pick hit the mask in proportion to the tied pixels inside it."""
    above, tied = above_and_tied(r, k)
    still = (k - above.sum(1)).double()
    hits = (above & m).sum(1).double() + still * (tied & m).sum(1).double() / tied.sum(1).clamp(min=1).double()
    return torch.where(k > 0, hits, torch.zeros_like(hits))


def _disk(radius: float, device) -> torch.Tensor:
    t = int(math.floor(radius))
    d = torch.arange(-t, t + 1, dtype=torch.float64, device=device)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= radius ** 2).double()


def dilate(m: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean distance ``radius`` of the mask (N, H, W) bool."""
    if radius <= 0:
        return m
    k = _disk(radius, m.device)
    t = k.shape[-1] // 2
    return F.conv2d(m.double().unsqueeze(1), k[None, None], padding=t)[:, 0] > 0.5


def bounding_box(m: torch.Tensor) -> torch.Tensor:
    """The smallest axis-aligned rectangle that holds each mask (N, H, W) bool; empty stays empty."""
    rows, cols = m.any(2), m.any(1)
    h, w = m.shape[-2:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)

    def span(hit, ar, size):
        first = torch.where(hit, ar, torch.full_like(ar, size)).amin(1)
        last = torch.where(hit, ar, torch.full_like(ar, -1)).amax(1)
        return (ar >= first[:, None]) & (ar <= last[:, None])

    return span(rows, ar_h, h)[:, :, None] & span(cols, ar_w, w)[:, None, :]


@register_metric("pointing_game", family="localisation", cost=no_passes, directions={"hit": "higher"}, needs=("masks",))
def pointing_game(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                  masks: torch.Tensor | None = None, tolerance: float = 0) -> pd.DataFrame:
    """Pointing game (Zhang et al. 2018, IJCV): 1 if the max of sum_c R lies in the mask (within ``tolerance`` px).

    hit = |argmax(r) ∩ dilate(M, tolerance)| / |argmax(r)|: a hit if the most relevant pixel lies in the mask or
    within ``tolerance`` pixels (Euclidean) of it. The paper allows 15 px at ImageNet size; the default 0 asks for
    the pixel itself (8 x 8 or 28 x 28 images have no room for a 15 px margin). Tied maxima share the hit (their
    expected value under random tie-breaking), so a constant or all-zero map scores |dilate(M)| / (H W), chance
    level. NaN: empty mask. Higher is better. Quantus 0.6 counts a hit if any tied maximum is in the mask, has no
    tolerance, and scores an empty mask 1 (its NaN is written into a bool array)."""
    m = check_masks(masks, x, "pointing_game", numbers=True)
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} of metric 'pointing_game' must be >= 0 (pixels)")
    r = channel_sum(attributions).flatten(1)
    top = r == r.amax(1, keepdim=True)
    region = dilate(m, float(tolerance)).flatten(1)
    hit = (top & region).sum(1).double() / top.sum(1).double()
    return scalar_rows(_nan_where(hit, ~m.flatten(1).any(1)), "hit")


@register_metric("attribution_localisation", family="localisation", cost=no_passes, needs=("masks",),
                 directions={"ratio": "higher", "weighted": "higher"})
def attribution_localisation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                             masks: torch.Tensor | None = None, max_size: float = 1.0) -> pd.DataFrame:
    """Attribution localisation (Kohlbrenner et al. 2020): positive relevance inside the mask / all positive relevance.

    mu = sum_{M} r+ / sum r+ with r = sum_c R_c (measure ``ratio``), and the size-weighted mu_w = mu * (H W) / |M|
    (measure ``weighted``; 1 = as good as a uniform map, larger = better than chance), as in the paper. Quantus 0.6
    multiplies by |M| / x_batch[2:].size instead (a size that depends on the batch) and takes |R| by default.
    NaN: empty mask, no positive relevance, or a mask larger than ``max_size`` of the image (Quantus's parameter;
    1.0 keeps all). Higher is better."""
    m = check_masks(masks, x, "attribution_localisation", numbers=True)
    if not 0 < max_size <= 1:
        raise ValueError(f"max_size={max_size} of metric 'attribution_localisation' must be in (0, 1]")
    r = channel_sum(attributions)
    size = m.flatten(1).sum(1).double()
    frac = size / m[0].numel()
    mu = _nan_where(_share(r, m), (size == 0) | (frac > max_size))
    weighted = mu / torch.where(size > 0, frac, torch.ones_like(frac))
    return _rows([(mu, "ratio"), (weighted, "weighted")])


def _rows(parts):
    """Scalar rows of several measures in one table: measure by measure, samples in order."""
    v = torch.cat([p.detach().double().cpu() for p, _ in parts]).numpy()
    n = len(parts[0][0])
    return pd.DataFrame({"sample": np.tile(np.arange(n), len(parts)), "measure": np.repeat([m for _, m in parts], n),
                         "value": v, "direction": UNSET})


@register_metric("top_k_intersection", family="localisation",
                 cost=no_passes, directions={"ratio": "higher"}, needs=("masks",))
def top_k_intersection(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       masks: torch.Tensor | None = None, k: float = 0.02,
                       concept_influence: bool = False) -> pd.DataFrame:
    """Top-k intersection (Theiner et al. 2021): the share of the k most relevant pixels of sum_c R in the mask.

    tki = |top-k(r) ∩ M| / k. ``k``: a fraction of the pixels when below 1 (default 0.02: Quantus's 1000 pixels at
    224 x 224, scaled with the image; at least one pixel), else a pixel count, capped at H W (Quantus's k = 1000
    exceeds a 28 x 28 image). ``concept_influence``: tki * (H W) / |M| (chance level = 1), as in Quantus. Ties at
    the k-th value count by their expected share: a constant map scores |M| / (H W). NaN: empty mask. Higher is
    better."""
    m = check_masks(masks, x, "top_k_intersection", numbers=True)
    hw = m[0].numel()
    kk = _k_pixels(k, hw)
    r = channel_sum(attributions).flatten(1)
    mf = m.flatten(1)
    ks = torch.full((len(r),), kk, dtype=torch.long, device=r.device)
    tki = expected_top_k_hits(r, mf, ks) / kk
    size = mf.sum(1).double()
    if concept_influence:
        tki = tki * hw / size.clamp(min=1)
    return scalar_rows(_nan_where(tki, size == 0), "ratio")


def _k_pixels(k, hw: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0:
        raise ValueError(f"k={k!r} of metric 'top_k_intersection' must be a fraction in (0, 1) or a pixel count >= 1")
    return max(1, round(k * hw)) if k < 1 else min(int(k), hw)


@register_metric("relevance_mass_accuracy", family="localisation",
                 cost=no_passes, directions={"ratio": "higher"}, needs=("masks",))
def relevance_mass_accuracy(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                            masks: torch.Tensor | None = None) -> pd.DataFrame:
    """Relevance mass accuracy (Arras, Osman & Samek 2022, CLEVR-XAI): positive relevance in the mask / in total.

    RMA = sum_{M} r+ / sum r+ with r = sum_c R_c (the paper's sum pooling; negative relevance is evidence against
    the class and is left out). Quantus 0.6 divides the raw sums (after its own normalisation). NaN: empty mask or no
    positive relevance. Higher is better."""
    m = check_masks(masks, x, "relevance_mass_accuracy", numbers=True)
    rma = _share(channel_sum(attributions), m)
    return scalar_rows(_nan_where(rma, ~m.flatten(1).any(1)), "ratio")


@register_metric("relevance_rank_accuracy", family="localisation",
                 cost=no_passes, directions={"ratio": "higher"}, needs=("masks",))
def relevance_rank_accuracy(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                            masks: torch.Tensor | None = None) -> pd.DataFrame:
    """Relevance rank accuracy (Arras, Osman & Samek 2022, CLEVR-XAI): share of the top-K pixels in the mask, K = |M|.

    RRA = |top-K(r) ∩ M| / K with r = sum_c R_c. Ties at the K-th value count by their expected share, so a
    constant map scores |M| / (H W). NaN: empty mask. Higher is better."""
    m = check_masks(masks, x, "relevance_rank_accuracy", numbers=True)
    mf = m.flatten(1)
    size = mf.sum(1)
    hits = expected_top_k_hits(channel_sum(attributions).flatten(1), mf, size)
    rra = hits / size.clamp(min=1).double()
    return scalar_rows(_nan_where(rra, size == 0), "ratio")


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC-AUC per row of scores (N, P) against bool labels (N, P), exact, ties as in sklearn's roc_auc_score.

    AUC = (sum of the average ranks of the positives - n+(n+ + 1)/2) / (n+ n-) (Mann-Whitney U; tied scores get
    their average rank, the trapezoid of the ROC curve). NaN where a row has no positive or no negative."""
    n, p = scores.shape
    srt, order = sort_rows(scores.double())
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    group = new.long().cumsum(1) - 1
    pos = torch.arange(1, p + 1, dtype=torch.float64, device=scores.device).expand(n, p)
    rank_sum = torch.zeros(n, p, dtype=torch.float64, device=scores.device).scatter_add_(1, group, pos)
    count = torch.zeros(n, p, dtype=torch.float64, device=scores.device).scatter_add_(1, group, torch.ones_like(pos))
    avg = (rank_sum / count.clamp(min=1)).gather(1, group)
    lab = labels.gather(1, order)
    n_pos = lab.sum(1).double()
    n_neg = p - n_pos
    u = (avg * lab).sum(1) - n_pos * (n_pos + 1) / 2
    return _nan_where(u / (n_pos * n_neg).clamp(min=1), (n_pos == 0) | (n_neg == 0))


@register_metric("localisation_auc", family="localisation",
                 cost=no_passes, directions={"auc": "higher"}, needs=("masks",))
def localisation_auc(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                     masks: torch.Tensor | None = None) -> pd.DataFrame:
    """ROC-AUC of the pixel scores sum_c R_c against the mask (Fawcett 2006; Quantus's ``AUC``).

    The probability that a random mask pixel outranks a random pixel outside it (ties count 1/2), exact and batched
    (equal to sklearn.metrics.roc_auc_score). Perfect map 1, inverted 0, constant 0.5. NaN: a mask that is empty or
    covers the whole image. Higher is better."""
    m = check_masks(masks, x, "localisation_auc", numbers=True)
    return scalar_rows(roc_auc(channel_sum(attributions).flatten(1), m.flatten(1)), "auc")


@register_metric("energy_pointing_game", family="localisation",
                 cost=no_passes, directions={"energy": "higher"}, needs=("masks",))
def energy_pointing_game(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                         masks: torch.Tensor | None = None, bbox: bool = True) -> pd.DataFrame:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): positive energy inside the mask's bounding box.

    E = sum_{B} r+ / sum r+ with r = sum_c R_c and B the bounding box of the mask (``bbox=true``, as the paper's
    boxes; ``false`` uses the mask itself, then E equals attribution_localisation's ratio). The paper's maps are
    non-negative CAMs; r+ plays that role for signed maps. NaN: empty mask or no positive relevance. Higher is
    better."""
    m = check_masks(masks, x, "energy_pointing_game", numbers=True)
    region = bounding_box(m) if bbox else m
    e = _share(channel_sum(attributions), region)
    return scalar_rows(_nan_where(e, ~m.flatten(1).any(1)), "energy")


@register_metric("xai_tris_precision", family="localisation",
                 cost=no_passes, directions={"precision": "higher"}, needs=("masks",))
def xai_tris_precision(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       masks: torch.Tensor | None = None) -> pd.DataFrame:
    """XAI-TRIS precision (Clark, Wilming & Haufe 2024): share of the |M| largest pixels of sum_c |R_c| in the mask.

    P = |top-n(a) ∩ M| / n with a = sum_c |R_c| and n = |M|; as in the paper's code only non-zero pixels are
    selected (a map with fewer than n non-zero pixels selects those, and a zero map scores 0). Ties at the n-th
    value count by their expected share (the code takes argpartition's order). NaN: empty mask. Higher is better."""
    m = check_masks(masks, x, "xai_tris_precision", numbers=True)
    a = abs_channel_sum(attributions).flatten(1)
    mf = m.flatten(1)
    n = mf.sum(1)
    nonzero = (a > 0).sum(1)
    k = torch.minimum(n, nonzero)
    hits = expected_top_k_hits(torch.where(a > 0, a, torch.full_like(a, -1.0)), mf, k)
    prec = hits / n.clamp(min=1).double()
    return scalar_rows(_nan_where(prec, n == 0), "precision")


def _block_pool(dist: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum a (H, W) distribution over f x f blocks; returns the block masses (h * w,) and the centres (h * w, 2)
    of each block's pixels, in pixel units."""
    h, w = dist.shape
    hb, wb = -(-h // f), -(-w // f)
    pad = np.zeros((hb * f, wb * f))
    pad[:h, :w] = dist
    mass = pad.reshape(hb, f, wb, f).sum((1, 3)).ravel()
    cy = np.array([(i * f + min(h, (i + 1) * f) - 1) / 2 for i in range(hb)])
    cx = np.array([(j * f + min(w, (j + 1) * f) - 1) / 2 for j in range(wb)])
    centres = np.stack(np.meshgrid(cy, cx, indexing="ij"), -1).reshape(-1, 2)
    return mass, centres


def emd_grid(a: np.ndarray, b: np.ndarray, grid: int = 16) -> float:
    """Earth mover's distance between two distributions on the same (H, W) pixel grid, Euclidean ground distance in
    pixels, solved exactly as a transport linear program (scipy's HiGHS).

    Mass both distributions share stays in place (optimal for a metric cost), so only the excess of a is moved onto
    the excess of b. Grids larger than ``grid`` per side are first sum-pooled into f x f blocks, f = ceil(max(H, W)
    / grid), placed at the centres of their pixels: the transport between blocks is exact, and it differs from the
    pixel-level EMD by at most sqrt(2) (f - 1) pixels (each distribution moves at most (f - 1) / sqrt(2) to its
    block centres)."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix

    f = max(1, -(-max(a.shape) // int(grid)))
    pa, centres = _block_pool(a, f)
    pb, _ = _block_pool(b, f)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    common = np.minimum(pa, pb)
    ea, eb = pa - common, pb - common
    moved = ea.sum()  # = eb.sum(): the mass that must move
    if moved <= 1e-12:
        return 0.0
    # the program is solved for unit excess (masses far below the solver's feasibility tolerance of 1e-7 made it
    # infeasible) and its cost scaled back; excess below 1e-15 of the moved mass is dropped and the rest rebalanced
    ea, eb = ea / moved, eb / eb.sum()
    src, dst = np.flatnonzero(ea > 1e-15), np.flatnonzero(eb > 1e-15)
    supply, demand = ea[src] / ea[src].sum(), eb[dst] / eb[dst].sum()
    cost = np.sqrt(((centres[src][:, None, :] - centres[dst][None, :, :]) ** 2).sum(-1))
    ns, nd = cost.shape
    var = np.arange(ns * nd)
    rows = np.concatenate([var // nd, ns + var % nd])
    eq = csr_matrix((np.ones(2 * ns * nd), (rows, np.concatenate([var, var]))), shape=(ns + nd, ns * nd))
    res = linprog(cost.ravel(), A_eq=eq, b_eq=np.concatenate([supply, demand]), bounds=(0, None), method="highs",
                  options={"presolve": False})  # HiGHS's presolve called feasible programs with tiny masses infeasible
    if res.status != 0:
        raise RuntimeError(f"the transport program of xai_tris_emd did not solve: {res.message}")
    return float(res.fun) * moved


@register_metric("xai_tris_emd", family="localisation",
                 cost=no_passes, directions={"emd_score": "higher"}, needs=("masks",))
def xai_tris_emd(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                 masks: torch.Tensor | None = None, grid: int = 16) -> pd.DataFrame:
    """XAI-TRIS EMD score (Clark, Wilming & Haufe 2024): 1 - EMD(|map|, mask) / D_max, higher = closer to the mask.

    a = sum_c |R_c| / sum |R| and g = M / |M| are distributions over pixels; EMD is the optimal transport cost
    between them with Euclidean pixel distances, solved exactly (``emd_grid``; maps larger than ``grid`` pixels per
    side are sum-pooled to at most grid x grid blocks first: 8 x 8 is exact at the default 16, 64 x 64 is solved on
    16 x 16 blocks of 4 px, error <= 4.3 px / D_max; raise ``grid`` for an exact 64 x 64 answer at seconds per map).
    D_max = sqrt((H - 1)^2 + (W - 1)^2), the largest distance between two pixels, as the paper defines it (its code
    divides by sqrt(2 H W), slightly larger). NaN: empty mask or an all-zero map. Higher is better."""
    m = check_masks(masks, x, "xai_tris_emd", numbers=True)
    if int(grid) < 1:
        raise ValueError(f"grid={grid} of metric 'xai_tris_emd' must be >= 1 (blocks per side)")
    a = abs_channel_sum(attributions).cpu().numpy()
    g = m.cpu().numpy().astype(np.float64)
    h, w = g.shape[-2:]
    dmax = math.hypot(h - 1, w - 1)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if g[i].sum() > 0 and a[i].sum() > 0 and dmax > 0:
            out[i] = 1.0 - emd_grid(a[i] / a[i].sum(), g[i] / g[i].sum(), grid) / dmax
    return scalar_rows(out, "emd_score")
