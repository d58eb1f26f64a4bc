"""Robustness of explanations: continuity under translation (Montavon, Samek & Müller 2018, §7.1), max- and
avg-sensitivity under small noise (Yeh et al. 2019; captum's ``sensitivity_max``), the local Lipschitz estimate
(Alvarez-Melis & Jaakkola 2018) and local consistency (Dasgupta, Frost & Moshkovitz 2022).

All re-explain perturbed inputs with the method being scored, stacked into the batch dimension. Noise is drawn per
sample (``evalxai.core.seeding``), so values do not depend on the batch. Prediction flips: with ``nan_on_flip`` a draw
whose predicted class (argmax of the logits) differs from that of x is left out (NaN) and the sample's value is
taken over the remaining draws; a sample whose every draw flips is NaN. ``flip_rate`` rows (direction "none") say
how many draws flipped.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import data_range
from evalxai.core.memory import images_per_chunk
from evalxai.core.scoring import require_images
from evalxai.core.seeding import per_sample_noise
from evalxai.core.sorting import sort_rows
from evalxai.metrics.common import UNSET, batched_scores, check_score_space, explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import Passes, register_metric


def translate(x: torch.Tensor, shift: int, axis: str = "x", fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Images (..., H, W) moved by ``shift`` pixels (right / down for shift > 0); the shifted-in pixels are ``fill``
    (a number or a tensor broadcastable to x, e.g. per channel (C, 1, 1))."""
    dim = -1 if axis == "x" else -2
    if shift == 0:
        return x.clone()
    out = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x).clone()
    size = x.shape[dim]
    src = x.narrow(dim, max(0, -shift), size - abs(shift))
    out.narrow(dim, max(0, shift), size - abs(shift)).copy_(src)
    return out


def _max_ratio(num: torch.Tensor, den: torch.Tensor) -> np.ndarray:
    """max over the path (dim 0) of num / den where den > 0; NaN for a sample with no valid pair."""
    ratio = torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))
    r = ratio.double().cpu().numpy()
    valid = ~np.isnan(r).all(0)
    out = np.full(r.shape[1], np.nan)
    out[valid] = np.nanmax(r[:, valid], axis=0)
    return out


def path_continuity(rs: torch.Tensor, xs: torch.Tensor, ref: int) -> dict[str, np.ndarray]:
    """Continuity estimators along a path of inputs xs (T, N, ...) with maps rs (T, N, ...), per sample:
    ``continuity_path`` = max_t ||R_t+1 - R_t||_1 / ||x_t+1 - x_t||_2 and ``continuity_ref`` =
    max_t ||R_t - R_ref||_1 / ||x_t - x_ref||_2 (Montavon 2018, §7.1)."""
    def l1(a):
        return a.reshape(*a.shape[:2], -1).abs().sum(-1)

    def l2(a):
        return a.reshape(*a.shape[:2], -1).pow(2).sum(-1).sqrt()

    return {"continuity_path": _max_ratio(l1(rs[1:] - rs[:-1]), l2(xs[1:] - xs[:-1])),
            "continuity_ref": _max_ratio(l1(rs - rs[ref:ref + 1]), l2(xs - xs[ref:ref + 1]))}


def _path_length(shift: int, stride: int) -> int:
    """Positions t = -shift..shift (every ``stride``) of the translation path."""
    return 2 * (int(shift) // int(stride)) + 1


def _noise_cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """``samples`` explains; with ``nan_on_flip`` the noisy copies and x forwarded for their predictions."""
    return Passes(int(p["samples"]) + 1 if p["nan_on_flip"] else 0, int(p["samples"]))


@register_metric("continuity", family="robustness", needs=("method",),
                 cost=lambda model, x, p: Passes(_path_length(p["shift"], p["stride"]),
                                                 _path_length(p["shift"], p["stride"])),
                 directions={"continuity_path": "lower", "continuity_ref": "lower", "continuity_path_aligned": "lower",
                             "continuity_ref_aligned": "lower", "quadrant_*": "none", "score": "none"})
def continuity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, shift: int = 6,
               stride: int = 1, axis: str = "x", align: bool = True, score_space: str = "logit",
               method: str | Callable | dict | None = None, method_params: dict | None = None,
               batch_size: int | None = None, low: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Continuity: max_t ||R(x_t) - R(x_t')||_1 / ||x_t - x_t'||_2 on a translation path (lower is better).

    Path: x translated by t = -shift..shift pixels (every ``stride``) along ``axis``, the shifted-in pixels black
    (``low``, the model-space value of pixel 0; None: ``evalxai.core.baselines.data_range``'s 0). Two estimators,
    per sample: ``continuity_path`` (consecutive positions) and ``continuity_ref`` (each position against the
    untranslated x); with ``align`` also both after shifting each map back by -t (isolates change of shape from
    motion; 0 relevance fills the shifted-in columns). Curve rows (step = t in pixels): the relevance summed over
    the four image quadrants (``quadrant_1..4``: top-left, top-right, bottom-left, bottom-right) and the target
    ``score`` along the path.
    """
    check_score_space(score_space)
    require_images(x, "continuity")
    if axis not in ("x", "y"):
        raise ValueError(f"axis='{axis}' must be 'x' (horizontal) or 'y' (vertical)")
    side = x.shape[-1] if axis == "x" else x.shape[-2]
    if not 0 < shift < side:
        raise ValueError(f"shift={shift} must be between 1 and the image side minus one ({side - 1})")
    if not 1 <= stride <= shift:
        raise ValueError(f"stride={stride} must be between 1 and shift={shift}")
    fn = explainer(method, method_params, "continuity")
    ts = [stride * j for j in range(-(shift // stride), shift // stride + 1)]  # _path_length of them
    black = data_range(low)[0]
    xs = torch.stack([translate(x, t, axis, black) for t in ts])  # (T, N, C, H, W)
    rs = explain_stack(fn, model, xs, target, batch_size)
    zero = ts.index(0)
    rs[zero] = attributions  # R(x) itself, as given
    n = len(x)
    est = path_continuity(rs, xs, zero)
    if align:
        back = torch.stack([translate(r, -t, axis) for r, t in zip(rs, ts)])
        est.update({f"{k}_aligned": v for k, v in path_continuity(back, xs, zero).items()})
    frames = [scalar_rows(v, k) for k, v in est.items()]
    h, w = x.shape[-2:]
    maps = rs.sum(2)  # (T, N, H, W)
    quads = [maps[..., : h // 2, : w // 2], maps[..., : h // 2, w // 2:], maps[..., h // 2:, : w // 2],
             maps[..., h // 2:, w // 2:]]
    score = batched_scores(model, xs, target, score_space, batch_size)
    steps = np.repeat(np.asarray(ts), n)
    samples = np.tile(np.arange(n), len(ts))
    for name, v in [*((f"quadrant_{i + 1}", q.sum((-1, -2))) for i, q in enumerate(quads)), ("score", score)]:
        frames.append(pd.DataFrame({"sample": samples, "step": steps, "measure": name, "direction": UNSET,
                                    "value": v.double().cpu().numpy().reshape(-1)}))
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    return out


def bounded(t: torch.Tensor, low: float | torch.Tensor | None = None,
            high: float | torch.Tensor | None = None) -> torch.Tensor:
    """t clipped into [low, high] (floats or tensors broadcastable to one input; None = unbounded)."""
    if low is None and high is None:
        return t
    lo, hi = (None if v is None else torch.as_tensor(v, dtype=t.dtype, device=t.device) for v in (low, high))
    return torch.clamp(t, lo, hi)


def gaussian_neighbours(x: torch.Tensor, seed: int, samples: int, noise: float, low: float | torch.Tensor | None = None,
                        high: float | torch.Tensor | None = None) -> torch.Tensor:
    """``samples`` noisy copies (S, N, ...) of x: x + N(0, noise^2) element-wise, per-sample draws from ``seed``,
    clipped into [low, high] when given."""
    return bounded(x.unsqueeze(0) + per_sample_noise(x, seed, samples, "normal") * noise, low, high)


@torch.no_grad()
def stack_logits(model: nn.Module, xs: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits (S, N, classes) of a stack of inputs (S, N, ...), chunked by the memory budget."""
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    step = images_per_chunk(model, flat, "forward", batch_size, "forwarding perturbed inputs")
    out = torch.cat([model(flat[i:i + step]) for i in range(0, len(flat), step)])
    return out.view(s, n, -1)


def flips(model: nn.Module, x: torch.Tensor, xs: torch.Tensor, batch_size: int | None = None,
          logits: torch.Tensor | None = None) -> torch.Tensor:
    """(S, N) bool: the predicted class (argmax) of xs[s, n] differs from that of x[n]."""
    if logits is None:
        logits = stack_logits(model, torch.cat([x.unsqueeze(0), xs]), batch_size)
    return logits[1:].argmax(-1) != logits[0].argmax(-1)


def reduce_draws(ratio: torch.Tensor, flipped: torch.Tensor | None, how: str) -> np.ndarray:
    """max or mean over the draws (dim 0) of a (S, N) ratio, NaN draws left out (flipped draws are made NaN);
    NaN for a sample with no draw left."""
    r = ratio.detach().double().cpu()
    if flipped is not None:
        r = torch.where(flipped.cpu(), torch.full_like(r, float("nan")), r)
    r = r.numpy()
    out = np.full(r.shape[1], np.nan)
    valid = ~np.isnan(r).all(0)
    out[valid] = (np.nanmax if how == "max" else np.nanmean)(r[:, valid], axis=0)
    return out


def check_positive(name: str, value: float, metric: str, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value} must be > 0 for metric '{metric}' ({what})")


def check_samples(samples: int, metric: str) -> None:
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 for metric '{metric}' (the number of noisy draws)")


def flip_rows(flipped: torch.Tensor) -> pd.DataFrame:
    """Per-sample fraction of draws whose prediction flipped (direction "none")."""
    return scalar_rows(flipped.double().mean(0), "flip_rate")


def sensitivity_ratios(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       radius: float, samples: int, seed: int, method: str | Callable | dict | None,
                       method_params: dict | None, batch_size: int | None, low: float | torch.Tensor | None,
                       high: float | torch.Tensor | None, nan_on_flip: bool,
                       metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Yeh et al. (2019)'s ratios ||R(x + d_s) - R(x)||_2 / ||R(x)||_2 (S, N), d_s ~ U[-radius, radius]
    element-wise; NaN where R(x) = 0. Shared by max- and avg-sensitivity. Also the flips (or None)."""
    check_positive("radius", radius, metric, "the L-inf noise radius in input units")
    check_samples(samples, metric)
    fn = explainer(method, method_params, metric)
    delta = (per_sample_noise(x, seed + 4242, samples, "uniform") * 2 - 1) * radius
    noisy = bounded(x.unsqueeze(0) + delta, low, high)
    rs = explain_stack(fn, model, noisy, target, batch_size)
    diff = (rs - attributions.unsqueeze(0)).reshape(samples, len(x), -1).double().norm(dim=-1)
    ref = attributions.reshape(len(x), -1).double().norm(dim=-1)
    ratio = torch.where(ref > 0, diff / ref.clamp(min=1e-300), torch.full_like(diff, float("nan")))
    return ratio, (flips(model, x, noisy, batch_size) if nan_on_flip else None)


_SENSITIVITY_DOC = """d ~ U[-radius, radius] element-wise (the L-inf ball; captum's default radius 0.02 in input
    units, Quantus 0.6: 0.2), ``samples`` draws per sample from ``seed``, x + d clipped into [``low``, ``high``]
    when given (the pipeline passes the dataset's pixel bounds). Lower is better. NaN policy: a zero map R(x) = 0 is
    NaN (the ratio is undefined); flipped predictions are kept by default (Yeh et al. do not condition on the
    prediction; Quantus's ``return_nan_when_prediction_changes=False``), with ``nan_on_flip`` they are left out
    (module docstring). Invariant to a positive rescaling of the method's maps. Cost: ``samples`` explains per
    sample (+ ``samples`` + 1 forwards with ``nan_on_flip``)."""


@register_metric("max_sensitivity", family="robustness", needs=("method",), cost=_noise_cost,
                 directions={"max_sensitivity": "lower", "avg_sensitivity": "lower", "flip_rate": "none"})
def max_sensitivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                    radius: float = 0.02, samples: int = 10, seed: int = 0, nan_on_flip: bool = False,
                    method: str | Callable | dict | None = None, method_params: dict | None = None,
                    batch_size: int | None = None, low: float | torch.Tensor | None = None,
                    high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Max-sensitivity (Yeh et al. 2019): max_s ||R(x + d_s) - R(x)||_2 / ||R(x)||_2, and the mean over the same
    draws (``avg_sensitivity``).

    """
    ratio, flipped = sensitivity_ratios(model, x, target, attributions, radius, samples, seed, method, method_params,
                                        batch_size, low, high, nan_on_flip, "max_sensitivity")
    frames = [scalar_rows(reduce_draws(ratio, flipped, "max"), "max_sensitivity"),
              scalar_rows(reduce_draws(ratio, flipped, "mean"), "avg_sensitivity")]
    if flipped is not None:
        frames.append(flip_rows(flipped))
    return pd.concat(frames, ignore_index=True)


@register_metric("avg_sensitivity", family="robustness", needs=("method",), cost=_noise_cost,
                 directions={"avg_sensitivity": "lower", "flip_rate": "none"})
def avg_sensitivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                    radius: float = 0.02, samples: int = 10, seed: int = 0, nan_on_flip: bool = False,
                    method: str | Callable | dict | None = None, method_params: dict | None = None,
                    batch_size: int | None = None, low: float | torch.Tensor | None = None,
                    high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Avg-sensitivity (Yeh et al. 2019): mean_s ||R(x + d_s) - R(x)||_2 / ||R(x)||_2, the same draws and code as
    ``max_sensitivity`` (whose rows also carry this mean).

    """
    ratio, flipped = sensitivity_ratios(model, x, target, attributions, radius, samples, seed, method, method_params,
                                        batch_size, low, high, nan_on_flip, "avg_sensitivity")
    frames = [scalar_rows(reduce_draws(ratio, flipped, "mean"), "avg_sensitivity")]
    if flipped is not None:
        frames.append(flip_rows(flipped))
    return pd.concat(frames, ignore_index=True)


for _f in (max_sensitivity, avg_sensitivity):
    _f.__doc__ = _f.__doc__.rstrip() + "\n    " + _SENSITIVITY_DOC + "\n    "


@register_metric("local_lipschitz_estimate", family="robustness", needs=("method",), cost=_noise_cost,
                 directions={"local_lipschitz_estimate": "lower", "flip_rate": "none"})
def local_lipschitz_estimate(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                             samples: int = 10, noise: float = 0.1, seed: int = 0, nan_on_flip: bool = False,
                             method: str | Callable | dict | None = None, method_params: dict | None = None,
                             batch_size: int | None = None, low: float | torch.Tensor | None = None,
                             high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max_s ||R(x) - R(x_s)||_2 / ||x - x_s||_2.

    x_s = x + N(0, noise^2) element-wise (Gaussian neighbours as in Quantus 0.6, ``perturb_std=0.1``), ``samples``
    draws per sample from ``seed`` (Quantus: 200), clipped into [``low``, ``high``] when given. Lower is better.
    Raw maps as in the paper: the value scales with the map (Quantus 0.6 max-normalises both maps by default,
    ``normalise=True``, and adds 1e-10 to the denominator). NaN policy: a draw with x_s = x (clipping removed the
    noise) is left out; flipped predictions are kept by default (the paper's neighbourhood is not conditioned on the
    prediction), ``nan_on_flip`` leaves them out (module docstring). Cost: ``samples`` explains per sample
    (+ ``samples`` + 1 forwards with ``nan_on_flip``).
    """
    check_positive("noise", noise, "local_lipschitz_estimate", "the Gaussian noise sigma in input units")
    check_samples(samples, "local_lipschitz_estimate")
    fn = explainer(method, method_params, "local_lipschitz_estimate")
    xs = gaussian_neighbours(x, seed, samples, noise, low, high)
    rs = explain_stack(fn, model, xs, target, batch_size)
    num = (rs - attributions.unsqueeze(0)).reshape(samples, len(x), -1).double().norm(dim=-1)
    den = (xs - x.unsqueeze(0)).reshape(samples, len(x), -1).double().norm(dim=-1)
    ratio = torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))
    flipped = flips(model, x, xs, batch_size) if nan_on_flip else None
    frames = [scalar_rows(reduce_draws(ratio, flipped, "max"), "local_lipschitz_estimate")]
    if flipped is not None:
        frames.append(flip_rows(flipped))
    return pd.concat(frames, ignore_index=True)


def top_k_sign(r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretised explanation (Dasgupta et al. 2022's ``top_n_sign``, as the paper means it): the k features of
    largest |R| (ties: the lower index first) as a sorted index set, and the signs of R there. r: (..., D)."""
    flat = r.reshape(-1, r.shape[-1]).abs()
    if k == 1:  # argmax returns the first of tied maxima
        order = flat.argmax(-1, keepdim=True)
    else:
        order = sort_rows(flat, descending=True)[1][:, :k].to(r.device)
    idx = order.sort(dim=-1).values.view(*r.shape[:-1], k)
    return idx, torch.sign(r.gather(-1, idx))


def _consistency_pool(model, x, attributions, reference, top_k, batch_size):
    """Against a fixed pool (x_ref, R_ref): per sample, the pool entries (other than x itself) with the same
    discretised map, and whether they share x's prediction; (P, N) bool each."""
    x_ref, r_ref = reference
    if not (isinstance(x_ref, torch.Tensor) and isinstance(r_ref, torch.Tensor) and x_ref.shape[1:] == x.shape[1:]
            and r_ref.shape == x_ref.shape):
        raise ValueError("consistency reference must be a pair (x_ref, R_ref) of tensors shaped (P, *x.shape[1:]): "
                         "the pool's inputs and their maps by the same method")
    x_ref, r_ref = x_ref.to(x), r_ref.to(attributions)
    logits = stack_logits(model, torch.cat([x, x_ref]).unsqueeze(0), batch_size)[0]
    pred, pred_ref = logits[:len(x)].argmax(-1), logits[len(x):].argmax(-1)
    idx0, sign0 = top_k_sign(attributions.reshape(len(x), -1), top_k)
    idx, sign = top_k_sign(r_ref.reshape(len(x_ref), -1), top_k)
    same_map = ((idx[:, None] == idx0[None]) & (sign[:, None] == sign0[None])).all(-1)
    itself = torch.stack([(x_ref.reshape(len(x_ref), -1) == xi.reshape(1, -1)).all(-1) for xi in x], 1)
    return same_map & ~itself, pred_ref[:, None] == pred[None]


@register_metric("consistency", family="robustness", needs=("method",),
                 cost=lambda model, x, p: (Passes((len(p["reference"][0]) + len(x)) / len(x), 0)
                                           if p["reference"] is not None else
                                           Passes(int(p["samples"]) + 1, int(p["samples"]))),
                 directions={"consistency": "higher", "match_rate": "none"})
def consistency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor, samples: int = 10,
                noise: float = 0.1, top_k: int = 1, seed: int = 0,
                reference: tuple[torch.Tensor, torch.Tensor] | None = None,
                method: str | Callable | dict | None = None, method_params: dict | None = None,
                batch_size: int | None = None, low: float | torch.Tensor | None = None,
                high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Local consistency (Dasgupta et al. 2022): P[f(x') = f(x) | d(R(x')) = d(R(x))].

    d = top-k-sign discretisation: the set of the ``top_k`` features of largest |R| (ties: lower index first) with
    their signs. The paper (and Quantus 0.6) takes x' from the other samples of the batch, so a sample's value
    depends on its batch. Two batch-independent estimates:

    - default: x' are ``samples`` noisy neighbours x + N(0, noise^2) per sample (seeded per sample, clipped into
      [``low``, ``high``]), re-explained with the method;
    - ``reference=(x_ref, R_ref)`` (API only): x' are the entries of a fixed pool with their maps (an entry equal to
      x is skipped, so passing the whole batch as the pool gives the paper's batch estimate).

    consistency = #{x': d(R(x')) = d(R(x)), argmax f(x') = argmax f(x)} / #{x': d(R(x')) = d(R(x))}. Higher is
    better (Quantus 0.6 declares "lower"). Also ``match_rate`` = the fraction of x' sharing d(R(x)) (direction
    "none"). NaN policy: NaN when no x' shares the discretised map (Quantus returns 0); prediction flips are what
    it measures, so there is no ``nan_on_flip``. Quantus 0.6's ``top_n_sign`` keeps the signs of the first n
    features in memory order, not of the n largest: here the largest, as the paper means. Invariant to positive
    rescaling. Cost: ``samples`` explains and ``samples`` + 1 forwards per sample (pool: P + N forwards).
    """
    d = attributions[0].numel()
    if not 1 <= top_k <= d:
        raise ValueError(f"top_k={top_k} must be between 1 and the number of features {d} (metric 'consistency')")
    if reference is not None:
        same_map, same_pred = _consistency_pool(model, x, attributions, reference, top_k, batch_size)
        total = len(reference[0])
    else:
        check_positive("noise", noise, "consistency", "the Gaussian noise sigma in input units")
        check_samples(samples, "consistency")
        fn = explainer(method, method_params, "consistency")
        xs = gaussian_neighbours(x, seed, samples, noise, low, high)
        rs = explain_stack(fn, model, xs, target, batch_size)
        idx0, sign0 = top_k_sign(attributions.reshape(len(x), -1), top_k)
        idx, sign = top_k_sign(rs.reshape(samples, len(x), -1), top_k)
        same_map = ((idx == idx0.unsqueeze(0)) & (sign == sign0.unsqueeze(0))).all(-1)  # (S, N)
        same_pred = ~flips(model, x, xs, batch_size)
        total = samples
    matches = same_map.double().sum(0)
    value = torch.where(matches > 0, (same_map & same_pred).double().sum(0) / matches.clamp(min=1),
                        torch.full_like(matches, float("nan")))
    return pd.concat([scalar_rows(value, "consistency"), scalar_rows(matches / total, "match_rate")],
                     ignore_index=True)
