"""Faithfulness as agreement between relevance and the effect of perturbing features.

Five metrics of the Quantus catalogue, each defined from its paper (deviations from Quantus 0.6 are stated per
metric). A *feature* is a pixel or a p x p patch; its relevance is the sum of the map over the patch and the
channels (as in pixel flipping). Perturbed copies of a batch are stacked into the batch dimension (S, N, ...) and
forwarded in chunks sized by the memory budget; every random draw comes from the sample's own generator
(``evalxai.core.seeding``), so a sample scores the same whatever batch it is in.

- ``faithfulness_correlation`` (Bhatt et al. 2020)
- ``faithfulness_estimate`` (Alvarez-Melis & Jaakkola 2018)
- ``monotonicity`` (Arya et al. 2019)
- ``monotonicity_correlation`` (Nguyen & Martinez 2020)
- ``sensitivity_n`` (Ancona et al. 2018)

Correlations are computed per sample in float64. NaN policy (all five correlations): a correlation with a constant
vector (a constant map, all-zero subset sums, a model whose score does not move) is undefined and is NaN, never 0.
Scores whose predicted class flips under a perturbation are kept: the metrics measure score changes, and removal is
expected to change the prediction.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import baseline_label, data_range, reference
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import check_patch, require_images
from evalxai.core.seeding import noise_draws, sample_generators
from evalxai.metrics.common import UNSET, batched_scores, check_score_space, scalar_rows
from evalxai.metrics.faithfulness import (
    MAX_STEPS,
    check_ties,
    default_patch,
    feature_ranks,
    patch_count,
    patch_mask,
    patch_relevance,
)
from evalxai.metrics.registry import Passes, register_metric

# -- shared pieces ------------------------------------------------------------------------------------------------


def features(x: torch.Tensor, attributions: torch.Tensor, patch_size: int | None, per_side: int,
             what: str) -> tuple[torch.Tensor, tuple[int, int], int]:
    """(relevance (N, P) float64, grid (Hp, Wp), patch side): the map summed over channels and p x p patches;
    ``patch_size`` None: about ``per_side`` patches along the shorter image side."""
    require_images(x, what)
    p = default_patch(x, per_side) if patch_size is None else int(patch_size)
    check_patch(x, p)
    rel, grid = patch_relevance(attributions.double(), p)
    return rel, grid, p


def feature_total(x: torch.Tensor, patch_size: int | None, per_side: int) -> int:
    """P, the features ``features`` makes of images shaped like x (the metrics' costs count forwards in them)."""
    require_images(x, "this metric")
    return patch_count(x, check_patch(x, default_patch(x, per_side) if patch_size is None else int(patch_size)))


def masked_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, fill: torch.Tensor | Callable,
                  select: torch.Tensor, grid: tuple[int, int], patch: int, score_space: str, batch_size: int | None,
                  what: str) -> torch.Tensor:
    """Scores (S, N) of x with the features chosen by ``select`` (S, N, P) bool replaced by ``fill``: a tensor (N, ...)
    or a callable ``fill(i, j)`` giving the fills (j - i, N, ...) of copies i..j-1 (e.g. noise draws, made per chunk);
    the S copies are forwarded in chunks of the memory budget."""
    s, n = select.shape[:2]
    size = x.shape[-2:]
    per = max(1, images_per_chunk(model, x, "forward", batch_size, what) // n)
    out = []
    for i in chunked(s, per, what):
        sel = select[i:i + per]
        mask = sel.view(*sel.shape[:2], 1, *size) if patch == 1 else patch_mask(sel, grid, patch, size)
        f = fill(i, min(i + per, s)) if callable(fill) else fill.unsqueeze(0)
        out.append(batched_scores(model, torch.where(mask, f, x.unsqueeze(0)), target, score_space, batch_size))
    return torch.cat(out)


def feature_count(size: float, n_features: int, name: str = "subset_size") -> int:
    """A subset size: an int >= 1 counts features, a float in (0, 1) is a fraction of them (at least 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"{name}={size!r} must be a count (int >= 1) or a fraction (float in (0, 1))")
    if isinstance(size, float) and 0 < size < 1:
        return max(1, round(size * n_features))
    if size != int(size) or not 1 <= int(size) <= n_features:
        raise ValueError(f"{name}={size!r} must be a count between 1 and the number of features {n_features}, "
                         "or a fraction in (0, 1)")
    return int(size)


def _feature_draws(x: torch.Tensor, seed: int, runs: int, n_features: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(sample index, (runs, P) uniform float64 draws) per sample, from the sample's own generator (the same whatever
    the batch): the draws both ``random_orders`` and ``random_subsets`` rank."""
    for n, g in enumerate(sample_generators(x, seed)):
        yield n, torch.rand(runs, n_features, generator=g, dtype=torch.float64)


def random_orders(x: torch.Tensor, seed: int, runs: int, n_features: int) -> torch.Tensor:
    """(runs, N, P) int64: ``runs`` random orders of the P features per sample (rank of each feature), drawn from the
    sample's own generator (the same whatever the batch). ``rank < n`` is a uniformly random n-subset."""
    ranks = torch.empty(len(x), runs, n_features, dtype=torch.long)
    pos = torch.arange(n_features).expand(runs, n_features)
    for n, v in _feature_draws(x, seed, runs, n_features):
        ranks[n].scatter_(1, v.argsort(1), pos)
    return ranks.transpose(0, 1).to(x.device)


def random_subsets(x: torch.Tensor, seed: int, runs: int, n_features: int, size: int) -> torch.Tensor:
    """(runs, N, P) bool: ``runs`` subsets of ``size`` of the P features per sample, uniformly at random without
    replacement: the first ``size`` features of each of ``random_orders``, found as the draws at or below their
    ``size``-th smallest (a selection, 3x faster than the full argsort; the same subsets, as float64 draws do not
    tie)."""
    sel = torch.empty(len(x), runs, n_features, dtype=torch.bool)
    for n, v in _feature_draws(x, seed, runs, n_features):
        torch.le(v, v.kthvalue(size, dim=1, keepdim=True).values, out=sel[n])
    return sel.transpose(0, 1).to(x.device)


def subset_sums(select: torch.Tensor, rel: torch.Tensor) -> np.ndarray:
    """Sum of relevance over each chosen subset: (N, S) float64 from select (S, N, P) bool and rel (N, P), in chunks
    of subsets (no (S, N, P) float copy)."""
    s, n, p = select.shape
    step = max(1, 2**22 // max(1, n * p))
    rel = rel.to(select.device, torch.float64)
    parts = [torch.where(select[i:i + step], rel, 0.0).sum(-1) for i in range(0, s, step)]
    return torch.cat(parts).T.cpu().numpy()


def _constant(v: np.ndarray) -> np.ndarray:
    """Rows of v (N, K) that are constant up to float rounding of sums (peak-to-peak <= 1e-9 of the largest value)."""
    scale = np.abs(v).max(1)
    return np.ptp(v, axis=1) <= 1e-9 * np.where(scale > 0, scale, 1.0)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of a and b (N, K), float64; NaN where a row is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    da, db = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((da * da).sum(1) * (db * db).sum(1))
    bad = _constant(a) | _constant(b) | (den == 0)
    r = (da * db).sum(1) / np.where(bad, 1.0, den)
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties, as scipy); NaN where a row is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    r = pearson(rankdata(a, axis=1), rankdata(b, axis=1))
    return np.where(_constant(a) | _constant(b), np.nan, r)


def _finish(frames, score_space, baseline=None) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    if baseline is not None:
        out["baseline"] = baseline_label(baseline)
    return out


def _check_positive(name: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name}={value!r} must be an int >= 1")
    return value


# -- faithfulness correlation (Bhatt et al. 2020) ------------------------------------------------------------------


@register_metric("faithfulness_correlation", family="faithfulness", directions={"faithfulness_correlation": "higher"},
                 cost=lambda model, x, p: Passes(int(p["runs"]) + 1, 0))
def faithfulness_correlation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                             runs: int = 100, subset_size: float = 0.25, patch_size: int = 1,
                             baseline: str | float | torch.Tensor = "zero", score_space: str = "logit", seed: int = 0,
                             batch_size: int | None = None, mean: float | torch.Tensor | None = None,
                             low: float | torch.Tensor | None = None,
                             high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Faithfulness correlation: Pearson over random subsets S of sum_{i in S} R_i and f(x) - f(x[S = baseline]).

    Bhatt, Weller & Moura 2020 ("Evaluating and aggregating feature-based model explanations", IJCAI):
    mu_F = corr_S (sum_{i in S} R_i, f(x) - f(x_{S <- xbar})), over ``runs`` subsets of ``subset_size`` features
    (a count, or a fraction of the features), drawn per sample. Features: pixels (``patch_size`` 1, relevance summed
    over channels) or p x p patches. Higher is better; forwards per sample: ``runs``.
    NaN: constant subset sums (e.g. a constant map) or a score that never moves. Flipped predictions are kept.
    Quantus 0.6 takes single channel elements as features (the same on one-channel images), default softmax scores
    and a batch-wide max normalisation of the map (which a correlation does not feel).
    """
    check_score_space(score_space)
    _check_positive("runs", runs, "faithfulness_correlation")
    rel, grid, p = features(x, attributions, patch_size, 28, "faithfulness_correlation")
    k = feature_count(subset_size, rel.shape[1])
    sel = random_subsets(x, seed, runs, rel.shape[1], k)  # (runs, N, P)
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    y0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
    y = masked_scores(model, x, target, base, sel, grid, p, score_space, batch_size, "faithfulness correlation")
    drop = (y0.unsqueeze(0) - y).double().cpu().numpy().T  # (N, runs)
    r = pearson(subset_sums(sel, rel), drop)
    return _finish([scalar_rows(r, "faithfulness_correlation", subset_size=k)], score_space, baseline)



# -- faithfulness estimate (Alvarez-Melis & Jaakkola 2018) ---------------------------------------------------------


@register_metric("faithfulness_estimate", family="faithfulness", directions={"faithfulness_estimate": "higher"},
                 cost=lambda model, x, p: Passes(feature_total(x, p["patch_size"], 14) + 1, 0))
def faithfulness_estimate(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                          patch_size: int | None = None, baseline: str | float | torch.Tensor = "zero",
                          score_space: str = "softmax", seed: int = 0, batch_size: int | None = None,
                          mean: float | torch.Tensor | None = None, low: float | torch.Tensor | None = None,
                          high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Faithfulness estimate: Pearson over features i of R_i and f(x) - f(x[i = baseline]), one removed at a time.

    Alvarez-Melis & Jaakkola 2018 ("Towards robust interpretability with self-explaining neural networks", NeurIPS):
    the correlation between each feature's relevance and the drop in the class probability when that feature alone
    is set to the baseline (``score_space`` softmax, as the paper). Features: p x p patches (``patch_size`` None:
    about 14 per side, 2 px on MNIST, 16 px at 224; 1 = pixels). Higher is better; forwards per sample: P.
    NaN: a constant map, or no feature whose removal moves the score. Flipped predictions are kept.
    Quantus 0.6 removes ``features_in_step`` elements taken in relevance order instead of fixed patches (the same for
    single pixels of a one-channel image).
    """
    check_score_space(score_space)
    rel, grid, p = features(x, attributions, patch_size, 14, "faithfulness_estimate")
    n_feat = rel.shape[1]
    sel = torch.eye(n_feat, dtype=torch.bool, device=x.device).unsqueeze(1).expand(n_feat, len(x), n_feat)
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    y0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
    y = masked_scores(model, x, target, base, sel, grid, p, score_space, batch_size, "faithfulness estimate")
    drop = (y0.unsqueeze(0) - y).double().cpu().numpy().T  # (N, P)
    r = pearson(rel.cpu().numpy(), drop)
    return _finish([scalar_rows(r, "faithfulness_estimate", patch_size=p)], score_space, baseline)


# -- monotonicity (Arya et al. 2019) --------------------------------------------------------------------------------


def addition_steps(n_feat: int, per_step: int | None, steps: int | None) -> tuple[int, int]:
    """(per_step, K): features added per step and the number of steps (as pixel flipping: ``MAX_STEPS`` by default)."""
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if per_step is None:
        per_step = max(1, math.ceil(n_feat / (MAX_STEPS if steps is None else int(steps))))
    if int(per_step) < 1:
        raise ValueError(f"per_step={per_step} must be >= 1")
    k = math.ceil(n_feat / int(per_step)) if steps is None else int(steps)
    return int(per_step), k


@register_metric("monotonicity", family="faithfulness",
                 cost=lambda model, x, p: Passes(addition_steps(feature_total(x, p["patch_size"], 28), p["per_step"],
                                                                p["steps"])[1], 0),
                 directions={"monotonicity": "higher", "monotonicity_share": "higher", "curve_insertion": "none"})
def monotonicity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                 patch_size: int | None = None, per_step: int | None = None, steps: int | None = None,
                 baseline: str | float | torch.Tensor = "zero", score_space: str = "softmax", tolerance: float = 1e-6,
                 seed: int = 0, ties: str = "random", batch_size: int | None = None,
                 mean: float | torch.Tensor | None = None, low: float | torch.Tensor | None = None,
                 high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Monotonicity: add features to the baseline in increasing relevance; 1 if the score never decreases, else 0.

    Arya et al. 2019 ("One explanation does not fit all", AIX360's monotonicity metric): starting from the baseline
    input, features are put back from least to most relevant, ``per_step`` at a time (default: ``MAX_STEPS`` steps);
    the curve y_1..y_K of the class probability (softmax, as AIX360) must be non-decreasing:
    ``monotonicity`` = 1[y_k+1 >= y_k - tolerance for all k] (``tolerance`` absorbs float noise between identical
    inputs in different chunks); ``monotonicity_share`` = the share of steps that do not decrease (a graded version).
    Features: p x p patches (``patch_size`` None: about 28 per side); equal relevances are taken in ``ties`` order.
    Higher is better; forwards per sample: K. Never NaN; flipped predictions are kept. Quantus 0.6 adds single
    elements (``features_in_step``) and compares exactly (tolerance 0).
    """
    check_score_space(score_space)
    check_ties(ties)
    if tolerance < 0:
        raise ValueError(f"monotonicity: tolerance={tolerance} must be >= 0")
    rel, grid, p = features(x, attributions, patch_size, 28, "monotonicity")
    n_feat = rel.shape[1]
    per_step, k_max = addition_steps(n_feat, per_step, steps)
    ranks = feature_ranks(rel, "lerf", seed, x, ties)  # position in increasing-relevance order
    added = torch.clamp(torch.arange(1, k_max + 1, device=x.device) * per_step, max=n_feat)
    absent = ranks.unsqueeze(0) >= added.view(-1, 1, 1)  # (K, N, P): features still at the baseline
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    y = masked_scores(model, x, target, base, absent, grid, p, score_space, batch_size, "monotonicity steps")
    yn = y.double().cpu().numpy()
    ok = np.diff(yn, axis=0) >= -tolerance  # (K - 1, N)
    mono = ok.all(0).astype(np.float64) if len(ok) else np.ones(len(x))
    share = ok.mean(0) if len(ok) else np.ones(len(x))
    frac = added.cpu().double().numpy() / n_feat
    curve = pd.DataFrame({"sample": np.tile(np.arange(len(x)), k_max), "step": np.repeat(np.arange(1, k_max + 1),
                          len(x)), "fraction": np.repeat(frac, len(x)), "value": yn.reshape(-1),
                          "measure": "curve_insertion", "direction": UNSET})
    return _finish([curve, scalar_rows(mono, "monotonicity"),
                    scalar_rows(share, "monotonicity_share")], score_space, baseline)


# -- monotonicity correlation (Nguyen & Martinez 2020) -------------------------------------------------------------

STATISTICS = ("mse", "variance", "mean")


def uniform_draws(x: torch.Tensor, seed: int, samples: int, low: float | torch.Tensor | None = None,
                  high: float | torch.Tensor | None = None) -> torch.Tensor:
    """(samples, N, ...) i.i.d. U[low, high] values (``evalxai.core.baselines.data_range``), draw s of sample n from its
    own generator: the values a feature takes when it is drawn at random."""
    lo, hi = data_range(low, high, x)
    return lo + (hi - lo) * noise_draws(x, seed + 31, range(samples), "uniform").to(x.dtype)


@register_metric("monotonicity_correlation", family="faithfulness", directions={"monotonicity_correlation": "higher"},
                 cost=lambda model, x, p: Passes(feature_total(x, p["patch_size"], 7) * int(p["samples"]) + 1, 0))
def monotonicity_correlation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                             patch_size: int | None = None, samples: int = 10, statistic: str = "mse",
                             score_space: str = "softmax", seed: int = 0, batch_size: int | None = None,
                             low: float | torch.Tensor | None = None,
                             high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Monotonicity correlation: Spearman over features i of |R|_i and the effect of drawing feature i at random.

    Nguyen & Martinez 2020 ("On quantitative aspects of model interpretability"): a feature with more relevance
    should make the prediction more uncertain when it is replaced by random values. For each feature i (a p x p patch,
    |R|_i = sum of |R| over it) and ``samples`` draws s of U[low, high] noise in its place (the rest of x unchanged):
    e_i = mean_s (f(x) - f(x_i<-noise_s))^2 (``statistic`` "mse", the paper's expected squared deviation),
    "variance" (variance of f over the draws) or "mean" (mean drop f(x) - f(x_i<-noise_s)).
    Result: Spearman(|R|, e) per sample, higher is better; forwards per sample: P x ``samples`` (``patch_size``
    None: about 7 patches per side, 49 on any image). NaN: constant |R| (e.g. a constant map) or constant e.
    Flipped predictions are kept. Quantus 0.6 groups ``features_in_step`` single elements in relevance order instead of
    patches, and scales e by 1 / f(x)^2, a per-sample constant that leaves the Spearman correlation unchanged.
    """
    check_score_space(score_space)
    _check_positive("samples", samples, "monotonicity_correlation")
    if statistic not in STATISTICS:
        raise ValueError(f"monotonicity_correlation: unknown statistic {statistic!r}: use one of {list(STATISTICS)}")
    require_images(x, "monotonicity_correlation")
    p = default_patch(x, 7) if patch_size is None else int(patch_size)
    check_patch(x, p)
    rel_abs, grid = patch_relevance(attributions.double().abs(), p)
    n_feat, n = rel_abs.shape[1], len(x)
    noise = uniform_draws(x, seed, samples, low, high)  # (S, N, ...)
    # copy (i, s) = feature i replaced by draw s: features outer, draws inner
    sel = torch.eye(n_feat, dtype=torch.bool, device=x.device).repeat_interleave(samples, 0)
    sel = sel.unsqueeze(1).expand(n_feat * samples, n, n_feat)

    def fill(i, j):
        return noise[torch.arange(i, j, device=noise.device) % samples]

    y0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
    y = masked_scores(model, x, target, fill, sel, grid, p, score_space, batch_size, "monotonicity correlation")
    y = y.double().view(n_feat, samples, n).cpu()
    if statistic == "mse":
        e = ((y0.double().cpu().view(1, 1, n) - y) ** 2).mean(1)
    elif statistic == "variance":
        e = y.var(1, unbiased=False)
    else:
        e = (y0.double().cpu().view(1, 1, n) - y).mean(1)
    r = spearman(rel_abs.cpu().numpy(), e.T.numpy())
    out = _finish([scalar_rows(r, "monotonicity_correlation", patch_size=p, statistic=statistic)],
                  score_space)
    out["baseline"] = "uniform"
    return out


# -- sensitivity-n (Ancona et al. 2018) -----------------------------------------------------------------------------


def default_sizes(n_feat: int, count: int = 8, top: float = 0.8) -> list[int]:
    """``count`` subset sizes, log-spaced from 1 feature to ``top`` of them (distinct, increasing)."""
    hi = max(1, int(top * n_feat))
    return sorted({int(round(v)) for v in np.geomspace(1, hi, count)})


def _sensitivity_n_cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    n_feat = feature_total(x, p["patch_size"], 28)
    sizes = default_sizes(n_feat) if p["sizes"] is None else [feature_count(v, n_feat, "sizes") for v in p["sizes"]]
    return Passes(len(sizes) * int(p["runs"]) + 1, 0)


@register_metric("sensitivity_n", family="faithfulness", directions={"sensitivity_n": "higher", "curve": "none"},
                 cost=_sensitivity_n_cost)
def sensitivity_n(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                  sizes: list[int] | None = None, runs: int = 100, patch_size: int = 1,
                  baseline: str | float | torch.Tensor = "zero", score_space: str = "logit", seed: int = 0,
                  batch_size: int | None = None, mean: float | torch.Tensor | None = None,
                  low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Sensitivity-n: per subset size n, Pearson over random n-subsets S of sum_S R and f(x) - f(x[S = baseline]).

    Ancona et al. 2018 ("Towards better understanding of gradient-based attribution methods", ICLR): a map satisfies
    sensitivity-n when the relevance of any n features sums to the output change when they are removed; measured as
    the correlation over ``runs`` random subsets per n (the paper: 100), per sample; the subsets of run s are the
    first n features of one random order per run, so they are uniform for every n and nested across n. ``sizes``:
    counts or fractions of the features (default: 8 sizes log-spaced from 1 feature to 80 %, as the paper's
    log-scale n axis).
    Rows: ``curve`` (step j = the j-th size, columns ``n`` and ``fraction``) and the scalar ``sensitivity_n`` = mean
    over the sizes where the correlation is defined. Higher is better; forwards per sample: len(sizes) x ``runs``.
    NaN: a size whose subset sums or drops are constant is NaN on the curve and left out of the mean; the scalar is
    NaN when every size is. Flipped predictions are kept. Quantus 0.6 differs from the paper: it removes features
    cumulatively in MoRF order (no random subsets), correlates the step's relevance with the cumulative drop, and
    correlates across the samples of the batch for each n (a batch-dependent number, not one per sample).
    """
    check_score_space(score_space)
    _check_positive("runs", runs, "sensitivity_n")
    rel, grid, p = features(x, attributions, patch_size, 28, "sensitivity_n")
    n_feat, n = rel.shape[1], len(x)
    ns = default_sizes(n_feat) if sizes is None else [feature_count(v, n_feat, "sizes") for v in sizes]
    if not ns:
        raise ValueError("sensitivity_n: sizes must name at least one subset size")
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    y0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
    curve = np.empty((n, len(ns)))
    ranks = random_orders(x, seed, runs, n_feat)  # run s of size n: the first n features of order s
    for j, size in enumerate(ns):  # one subset size at a time: at most runs x N copies in memory
        sel = ranks < size
        y = masked_scores(model, x, target, base, sel, grid, p, score_space, batch_size, f"sensitivity-n, n={size}")
        curve[:, j] = pearson(subset_sums(sel, rel), (y0.unsqueeze(0) - y).double().cpu().numpy().T)
    valid = ~np.isnan(curve)
    scalar = np.where(valid.any(1), np.nansum(curve, 1) / np.maximum(valid.sum(1), 1), np.nan)
    rows = pd.DataFrame({"sample": np.tile(np.arange(n), len(ns)), "step": np.repeat(np.arange(len(ns)), n),
                         "n": np.repeat(ns, n), "fraction": np.repeat(np.asarray(ns, dtype=np.float64) / n_feat, n),
                         "value": curve.T.reshape(-1), "measure": "curve", "direction": UNSET})
    return _finish([rows, scalar_rows(scalar, "sensitivity_n")], score_space, baseline)
