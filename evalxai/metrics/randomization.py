"""Randomisation sanity checks: an explanation of a model should change when the model (or the explained class)
does.

- ``randomization`` (Adebayo et al. 2018, MPRT): cascading re-initialisation from the top layer. A copy of the model
  has its parametrised layers (Linear / Conv, in reverse registration order, i.e. output first) re-initialised one
  more at a time with their own ``reset_parameters`` (seeded); after each, the method explains the same inputs and
  the Spearman rank correlation with the trained model's map is computed per sample, on the signed maps and on
  their absolute values. A method that explains the model decorrelates (lower is better); one that does not depend
  on the parameters (an edge detector) stays at 1. ``skip_layers`` (Quantus 0.6 MPRT's option of that name) explains
  the fully randomised model only: one explain per sample instead of one per layer, the same scalars.
- ``smooth_mprt`` and ``efficient_mprt`` (Hedström et al. 2023, "Sanity checks revisited"): the same cascade with
  noise-averaged maps, and the rise of the map's entropy from the trained to the fully randomised model.
- ``random_logit`` (Sixt et al. 2020): similarity (SSIM) of the maps for the target and for a random other class.

The model itself is never touched: every randomisation works on a deep copy, seeded (``cascade``).
"""
from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.guard import derived, refresh_from
from evalxai.core.scoring import num_classes
from evalxai.core.seeding import per_sample_noise, sample_generators
from evalxai.core.sorting import sort_rows, sorted_rows
from evalxai.metrics.common import UNSET, explain_stack, explainer, measure_rows, scalar_rows
from evalxai.metrics.registry import Passes, register_metric

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def average_ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D along each row, ties sharing their average rank (as scipy.stats.rankdata).

    One sort; each run of equal sorted values gets (first + last position) / 2 + 1 via a running max / min of
    the run boundaries, then the ranks go back to the original order."""
    srt, order = sort_rows(a)  # stable; tied values share their average rank either way
    n, d = a.shape
    pos = torch.arange(d, device=a.device).expand(n, d)
    differs = srt[:, 1:] != srt[:, :-1]
    edge = torch.ones(n, 1, dtype=torch.bool, device=a.device)
    first = torch.where(torch.cat([edge, differs], 1), pos, 0).cummax(1).values
    last = torch.where(torch.cat([differs, edge], 1), pos, d).flip(1).cummin(1).values.flip(1)
    avg = (first + last).double() / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman_rows(a: torch.Tensor, b: torch.Tensor, ranked: bool = False) -> np.ndarray:
    """Spearman rank correlation of each row pair (average ranks for ties); NaN where a row is constant.
    ``ranked``: ``a`` already holds ranks."""
    ra, rb = (a if ranked else average_ranks(a)), average_ranks(b)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = ((ra ** 2).sum(1) * (rb ** 2).sum(1)).sqrt()
    rho = (ra * rb).sum(1) / den.clamp(min=1e-300)
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan"))).numpy()


ORDERS = ("top_down", "bottom_up")


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers ``cascade`` re-initialises, in registration order (input side first)."""
    return [name for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def _seeded_reset(layer: nn.Module, seed: int) -> None:
    """``layer.reset_parameters()`` drawing from the default generator seeded with ``seed`` (the global state is
    restored after). A layer on the CPU seeds the CPU generator alone (torch.manual_seed would also queue a seed
    for every CUDA device, at a cost of ~0.1 ms); the same draws."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if all(p.device.type == "cpu" for p in layer.parameters()):
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        layer.reset_parameters()


def cascade(model: nn.Module, seed: int, order: str = "top_down") -> Iterator[tuple[int, str, nn.Module]]:
    """Yield (k, layer name, copy) for k = 1..L: a deep copy of the model whose Linear / Conv layers are
    re-initialised (``reset_parameters`` under ``torch.manual_seed(seed * 7919 + k)``) one more at a time,
    cumulatively, output layer first (``top_down``, Adebayo et al.) or input layer first (``bottom_up``). The same
    copy object is yielded each time; the model itself is never touched. The copy is ``derived`` from the
    model (kept while the model is unchanged, its layers given back their trained parameters at the
    start), so that an explainer prepares it (LRP's plan, the memory probe) once, not per call: one cascade of a
    model at a time (a new one, or ``fully_randomised``, re-initialises the same copy)."""
    if order not in ORDERS:
        raise ValueError(f"order='{order}' must be one of {list(ORDERS)} (the layer order of the randomisation)")
    layers = randomisable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to randomize")
    if order == "top_down":
        layers = layers[::-1]
    rand = _kept_copy(model)
    _FINISHED.pop(rand, None)
    refresh_from(rand, model)  # the trained parameters back (a former cascade re-initialised them), buffers too
    modules = dict(rand.named_modules())
    for k, name in enumerate(layers, start=1):
        _seeded_reset(modules[name], seed * 7919 + k)
        if k == len(layers):
            _FINISHED[rand] = (seed, order)
        yield k, name, rand


_FINISHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # kept copy -> (seed, order) of the cascade it ends


def _kept_copy(model: nn.Module) -> nn.Module:
    return derived(model, "randomisation", lambda: copy.deepcopy(model))


def fully_randomised(model: nn.Module, seed: int) -> nn.Module:
    """The last state of the top-down ``cascade``: every Linear / Conv layer re-initialised (the kept copy; when it
    holds that state already, from the last cascade of this model and seed, it is not re-initialised again)."""
    rand = _kept_copy(model)
    if _FINISHED.get(rand) == (seed, "top_down"):
        refresh_from(rand, model, skip=tuple(randomisable_layers(model)))  # the rest as the model is now
        return rand
    *_, (_, _, rand) = cascade(model, seed)
    return rand


def _cascade_rows(maps_of, reference: torch.Tensor, model, seed, order, n,
                  skip_layers: bool = False) -> pd.DataFrame:
    """Spearman (signed, absolute) curve rows per randomised layer and the scalars after the last one; with
    ``skip_layers`` the scalars alone, from one explanation of the last state."""
    trained = reference.reshape(n, -1).cpu()  # ranks are exact in any dtype; sorting float32 is cheaper
    ranks, ranks_abs = average_ranks(trained), average_ranks(trained.abs())
    signed, absolute = np.ones(n), np.ones(n)
    states = cascade(model, seed, order)
    if skip_layers:
        *_, last = states  # re-initialising is cheap; only the explanations cost
        states = [last]
    steps, layers, values = [], [], []
    for k, name, rand in states:
        r = maps_of(rand).detach().reshape(n, -1).cpu()
        signed, absolute = spearman_rows(ranks, r, ranked=True), spearman_rows(ranks_abs, r.abs(), ranked=True)
        steps.append(k)
        layers.append(name)
        values += [signed, absolute]
    full = measure_rows({"spearman_full": signed, "spearman_abs_full": absolute})
    if skip_layers:
        return full
    curves = pd.DataFrame({"sample": np.tile(np.arange(n), len(values)), "step": np.repeat(steps, 2 * n),
                           "measure": np.tile(np.repeat(np.array(["spearman", "spearman_abs"], dtype=object), n),
                                              len(steps)),
                           "direction": UNSET, "value": np.concatenate(values),
                           "layer": np.repeat(np.array(layers, dtype=object), 2 * n)})
    return pd.concat([curves, full], ignore_index=True)


# the cascade's measures: Spearman rho per randomised layer (curve rows) and after the last one (scalars)
CASCADE_DIRECTIONS = {"spearman_full": "lower", "spearman_abs_full": "lower", "spearman": "none",
                      "spearman_abs": "none"}


@register_metric("randomization", family="randomisation", directions=CASCADE_DIRECTIONS, needs=("method",),
                 cost=lambda model, x, p: Passes(0, 1 if p["skip_layers"] else len(randomisable_layers(model))))
def randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, seed: int = 0,
                  skip_layers: bool = False, method: str | Callable | dict | None = None,
                  method_params: dict | None = None) -> pd.DataFrame:
    """Cascading randomization: Spearman correlation (signed and absolute) per randomized layer; scalars after
    all layers are randomized (lower is better).

    Adebayo et al. 2018's cascade, output layer first (``cascade``, seeded by ``seed``): one explain per sample and
    layer. ``skip_layers`` (the option of that name of Quantus 0.6's MPRT): only the fully randomised model is
    explained, one explain per sample; the scalars ``spearman_full`` / ``spearman_abs_full`` are the same values,
    the per-layer curve rows are left out (for large models, where a layer-by-layer cascade costs tens of
    explains)."""
    fn = explainer(method, method_params, "randomization")
    return _cascade_rows(lambda rand: fn(rand, x, target), attributions, model, seed, "top_down", len(x),
                         bool(skip_layers))


@register_metric("smooth_mprt", family="randomisation", directions=CASCADE_DIRECTIONS, needs=("method",),
                 cost=lambda model, x, p: Passes(0, (len(randomisable_layers(model)) + 1) * int(p["samples"])))
def smooth_mprt(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, samples: int = 10,
                noise: float = 0.1, order: str = "bottom_up", seed: int = 0,
                method: str | Callable | dict | None = None, method_params: dict | None = None,
                batch_size: int | None = None) -> pd.DataFrame:
    """Smooth MPRT (Hedström et al. 2023): the cascading randomisation test on noise-averaged maps,
    Spearman(E(x; theta), E(x; theta_k)) with E(x; .) = 1/S sum_s R(x + e_s; .), e_s ~ N(0, sigma^2),
    sigma = ``noise`` * (max(x) - min(x)) per sample.

    Averaging removes the gradient noise that lets a noisy map decorrelate without explaining the model. The same
    ``samples`` noise draws (seeded per sample) are used for the trained model and every randomised state; the
    trained model's map is re-computed smoothed (Quantus 0.6 compares against the given, unsmoothed map when one is
    passed, and makes its last draw noise-free). Layers: ``bottom_up`` (input first, the paper's and Quantus's
    default) or ``top_down``, seeded as ``randomization``. Rows: ``spearman`` / ``spearman_abs`` per randomised
    layer (step k, ``layer``) and ``spearman_full`` / ``spearman_abs_full`` after the last (lower is better;
    Quantus's default is the absolute map). NaN: a constant map (no ranks). Invariant to positive rescaling.
    Cost: (layers + 1) x ``samples`` explains per sample.
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 for metric 'smooth_mprt' (noisy copies per map)")
    if noise < 0:
        raise ValueError(f"noise={noise} must be >= 0 for metric 'smooth_mprt' (sigma, a fraction of the input range)")
    fn = explainer(method, method_params, "smooth_mprt")
    n = len(x)
    flat = x.reshape(n, -1)
    spread = (flat.max(1).values - flat.min(1).values).view(n, *([1] * (x.dim() - 1)))
    xs = x.unsqueeze(0) + per_sample_noise(x, seed, samples, "normal") * (noise * spread)

    def smoothed(m):
        return explain_stack(fn, m, xs, target, batch_size).mean(0)

    return _cascade_rows(smoothed, smoothed(model), model, seed, order, n)


def histogram_entropy(a: torch.Tensor, bins: int) -> torch.Tensor:
    """Shannon entropy (nats) of the histogram of each row of a (N, D) with ``bins`` equal bins over the row's own
    [min, max] (a constant row: [v - 0.5, v + 0.5]), exactly as ``scipy.stats.entropy(np.histogram(row, bins)[0])``:
    bin k holds edge_k <= v < edge_k+1 (the last bin also its upper edge), numpy's edges lo + k (hi - lo) / bins;
    counted by binary search of the inner edges in the sorted row."""
    srt = sorted_rows(a.double())
    n, d = srt.shape
    lo, hi = srt[:, :1], srt[:, -1:]
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    inner = lo + torch.arange(1, bins, dtype=torch.float64, device=a.device) * ((hi - lo) / bins)
    below = torch.searchsorted(srt, inner)  # values below each inner edge
    ends = torch.tensor([0, d], dtype=below.dtype, device=a.device).expand(n, 2)
    prob = torch.cat([ends[:, :1], below, ends[:, 1:]], 1).diff(dim=1).double() / d
    return -(prob * torch.where(prob > 0, prob.log(), torch.zeros_like(prob))).sum(1)


@register_metric("efficient_mprt", family="randomisation", needs=("method",), cost=lambda model, x, p: Passes(0, 1),
                 directions={"efficient_mprt": "higher", "entropy_trained": "none", "entropy_random": "none"})
def efficient_mprt(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, bins: int = 100,
                   seed: int = 0, method: str | Callable | dict | None = None, method_params: dict | None = None,
                   batch_size: int | None = None) -> pd.DataFrame:
    """Efficient MPRT (Hedström et al. 2023): relative rise of the map's complexity from the trained to the fully
    randomised model, (H(R(x; theta_rand)) - H(R(x; theta))) / H(R(x; theta)).

    H = discrete entropy of the map's histogram, ``bins`` equal bins over the map's own range (Quantus 0.6's
    ``discrete_entropy`` with its default n_bins=100). theta_rand = every Linear / Conv layer re-initialised, the
    final state of ``randomization``'s top-down cascade with the same ``seed`` (only that state matters; Quantus
    walks bottom-up with one seed for every layer). A method that explains the model should lose its structure:
    higher is better. Rows: ``efficient_mprt``, ``entropy_trained``, ``entropy_random`` (direction "none"). NaN
    policy: a constant trained map has H = 0, the rise is undefined: NaN. Invariant to positive rescaling.
    Cost: one explain per sample.
    """
    if bins < 2:
        raise ValueError(f"bins={bins} must be >= 2 for metric 'efficient_mprt' (histogram bins of the entropy)")
    fn = explainer(method, method_params, "efficient_mprt")
    rand = fully_randomised(model, seed)
    n = len(x)
    r_rand = explain_stack(fn, rand, x.unsqueeze(0), target, batch_size)[0]
    h0, h1 = histogram_entropy(torch.cat([m.reshape(n, -1).double() for m in (attributions, r_rand)]), bins).split(n)
    rise = torch.where(h0 > 0, (h1 - h0) / h0.clamp(min=1e-300), torch.full_like(h0, float("nan")))
    return measure_rows({"efficient_mprt": rise, "entropy_trained": h0, "entropy_random": h1})


def window_means(t: torch.Tensor, window: int) -> torch.Tensor:
    """Means of ``t`` (..., H, W) over every ``window`` x ``window`` square inside the image, (..., H - w + 1,
    W - w + 1): two products with banded matrices of 1 / window (as avg_pool2d with stride 1, several times
    faster)."""
    def band(size):
        i = torch.arange(size - window + 1, device=t.device).unsqueeze(1)
        j = torch.arange(size, device=t.device)
        return ((j >= i) & (j < i + window)).to(t.dtype) / window

    return band(t.shape[-2]) @ t @ band(t.shape[-1]).T


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of image pairs a, b (N, C, H, W) -> (N,), computed as
    ``skimage.metrics.structural_similarity`` does by default: a uniform ``window`` x ``window`` window, sample
    covariances, K1 = 0.01, K2 = 0.03, the mean over the window positions that fit inside the image and over the
    channels; data range = max - min over both maps of the pair (as Quantus 0.6 passes it). NaN where both maps
    are one constant (no range)."""
    a, b = a.double(), b.double()
    n, c, h, w = a.shape
    if window % 2 == 0 or not 3 <= window <= min(h, w):
        raise ValueError(f"window={window} must be odd and between 3 and the image side {min(h, w)} (SSIM)")
    fa, fb = a.reshape(n, -1), b.reshape(n, -1)
    rng = (torch.maximum(fa.amax(1), fb.amax(1)) - torch.minimum(fa.amin(1), fb.amin(1))).view(n, 1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    ma, mb, maa, mbb, mab = window_means(torch.stack([a, b, a * a, b * b, a * b]), window)
    cov = window ** 2 / (window ** 2 - 1)
    va, vb, vab = cov * (maa - ma ** 2), cov * (mbb - mb ** 2), cov * (mab - ma * mb)
    s = (2 * ma * mb + c1) * (2 * vab + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    out = s.reshape(n, -1).mean(1)
    return torch.where(rng.view(n) > 0, out, torch.full_like(out, float("nan")))


def random_other_class(x: torch.Tensor, target: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """A class != target per sample, uniform over the other ``classes`` - 1, drawn from the sample's own generator."""
    r = torch.tensor([int(torch.randint(classes - 1, (1,), generator=g)) for g in sample_generators(x, seed)],
                     device=target.device)
    return r + (r >= target).long()


SIMILARITIES = ("ssim", "spearman")


@register_metric("random_logit", family="randomisation", directions={"random_logit": "lower"}, needs=("method",),
                 cost=lambda model, x, p: Passes(0, 1))
def random_logit(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                 similarity: str = "ssim", window: int = 7, seed: int = 0, method: str | Callable | dict | None = None,
                 method_params: dict | None = None, batch_size: int | None = None) -> pd.DataFrame:
    """Random logit test (Sixt et al. 2020): similarity of R(x, target) and R(x, c) for a random class c != target.

    c is drawn uniformly from the other classes by each sample's own generator (``seed``; Quantus 0.6 seeds numpy
    once per batch, so c depends on the batch). ``similarity``: ``ssim`` (default, as Quantus; a 2-D SSIM over each
    channel's map, see ``ssim`` with ``window``; Quantus runs skimage on the flattened map, a 1-D SSIM) or
    ``spearman`` (rank correlation of the flattened maps, also for non-image inputs). Lower is better: a map that
    ignores the explained class is a poor explanation of that class. NaN policy: SSIM of two maps with no range
    (both one constant), Spearman of a constant map. Invariant to positive rescaling. Cost: one explain per sample.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity='{similarity}' must be one of {list(SIMILARITIES)} (metric 'random_logit')")
    if similarity == "ssim" and x.dim() != 4:
        raise ValueError(f"random_logit with similarity='ssim' needs images (N, C, H, W), got {tuple(x.shape)}: "
                         "use similarity='spearman'")
    classes = num_classes(model, x)
    if classes < 2:
        raise ValueError("random_logit needs a model with at least 2 outputs")
    fn = explainer(method, method_params, "random_logit")
    other = random_other_class(x, target, classes, seed)
    r_other = explain_stack(fn, model, x.unsqueeze(0), other, batch_size)[0]
    if similarity == "ssim":
        value = ssim(attributions, r_other, window)
    else:
        n = len(x)
        value = spearman_rows(attributions.reshape(n, -1).cpu(), r_other.reshape(n, -1).cpu())
    return scalar_rows(value, "random_logit", other_class=other.cpu().numpy())
