"""Robustness of explanations: continuity under translation (Montavon, Samek & Müller 2018, §7.1) and
max-sensitivity under small noise (Yeh et al. 2019; captum's ``sensitivity_max``).

Both re-explain perturbed inputs with the method being scored, stacked into the batch dimension.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from evalxai.metrics.common import batched_scores, check_score_space, explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import register_metric
from evalxai.scoring import require_images
from evalxai.seeding import per_sample_noise


def translate(x: torch.Tensor, shift: int, axis: str = "x") -> torch.Tensor:
    """Images (..., H, W) moved by ``shift`` pixels (right / down for shift > 0), zero fill."""
    dim = -1 if axis == "x" else -2
    if shift == 0:
        return x.clone()
    out = torch.zeros_like(x)
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


@register_metric("continuity", shift=6, stride=1, axis="x", align=True, score_space="logit", method=None,
                 method_params=None, batch_size=None)
def continuity(model, x, target, attributions, shift=6, stride=1, axis="x", align=True, score_space="logit",
               method=None, method_params=None, batch_size=None):
    """Continuity: max_t ||R(x_t) - R(x_t')||_1 / ||x_t - x_t'||_2 on a translation path (lower is better).

    Path: x translated by t = -shift..shift pixels (every ``stride``, zero fill) along ``axis``. Two estimators,
    per sample: ``continuity_path`` (consecutive positions) and ``continuity_ref`` (each position against the
    untranslated x); with ``align`` also both after shifting each map back by -t (isolates change of shape from
    motion). Curve rows (step = t in pixels): the relevance summed over the four image quadrants
    (``quadrant_1..4``: top-left, top-right, bottom-left, bottom-right) and the target ``score`` along the path.
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
    ts = [stride * j for j in range(-(shift // stride), shift // stride + 1)]
    xs = torch.stack([translate(x, t, axis) for t in ts])  # (T, N, C, H, W)
    rs = explain_stack(fn, model, xs, target, batch_size)
    zero = ts.index(0)
    rs[zero] = attributions  # R(x) itself, as given
    n = len(x)
    est = path_continuity(rs, xs, zero)
    if align:
        back = torch.stack([translate(r, -t, axis) for r, t in zip(rs, ts)])
        est.update({f"{k}_aligned": v for k, v in path_continuity(back, xs, zero).items()})
    frames = [scalar_rows(v, k, "lower") for k, v in est.items()]
    h, w = x.shape[-2:]
    maps = rs.sum(2)  # (T, N, H, W)
    quads = [maps[..., : h // 2, : w // 2], maps[..., : h // 2, w // 2:], maps[..., h // 2:, : w // 2],
             maps[..., h // 2:, w // 2:]]
    score = batched_scores(model, xs, target, score_space, batch_size)
    steps = np.repeat(np.asarray(ts), n)
    samples = np.tile(np.arange(n), len(ts))
    for name, v in [*((f"quadrant_{i + 1}", q.sum((-1, -2))) for i, q in enumerate(quads)), ("score", score)]:
        frames.append(pd.DataFrame({"sample": samples, "step": steps, "measure": name, "direction": "none",
                                    "value": v.double().cpu().numpy().reshape(-1)}))
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    return out


@register_metric("max_sensitivity", radius=0.02, samples=10, seed=0, method=None, method_params=None,
                 batch_size=None, low=None, high=None)
def max_sensitivity(model, x, target, attributions, radius=0.02, samples=10, seed=0, method=None,
                    method_params=None, batch_size=None, low=None, high=None):
    """Max-sensitivity: max over ``samples`` draws of ||R(x + d) - R(x)||_2 / ||R(x)||_2, d ~ U[-radius, radius]
    element-wise (the L-inf ball, captum's default radius 0.02 in input units); lower is better. Also the mean
    over the draws (avg-sensitivity). Noise is drawn per sample from ``seed``. With ``low`` / ``high`` (the
    pipeline passes the dataset's pixel bounds) x + d is clipped into them, so it stays a valid image (and the box
    rule's bounds hold)."""
    if radius <= 0:
        raise ValueError(f"radius={radius} must be > 0 (the L-inf noise radius in input units)")
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    fn = explainer(method, method_params, "max_sensitivity")
    delta = (per_sample_noise(x, seed + 4242, samples, "uniform") * 2 - 1) * radius
    noisy = x.unsqueeze(0) + delta
    if low is not None or high is not None:
        lo, hi = (None if v is None else torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (low, high))
        noisy = torch.clamp(noisy, lo, hi)
    rs = explain_stack(fn, model, noisy, target, batch_size)
    diff = (rs - attributions.unsqueeze(0)).reshape(samples, len(x), -1).double().norm(dim=-1)
    ref = attributions.reshape(len(x), -1).double().norm(dim=-1)
    ratio = diff / ref.clamp(min=1e-300)
    ratio = torch.where(ref > 0, ratio, torch.full_like(ratio, float("nan")))
    return pd.concat([scalar_rows(ratio.max(0).values, "max_sensitivity", "lower"),
                      scalar_rows(ratio.mean(0), "avg_sensitivity", "lower")], ignore_index=True)
