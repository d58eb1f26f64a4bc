"""Axiomatic properties of maps: conservation, non-sensitivity, input invariance.

- ``conservation`` (completeness; Bach 2015; Montavon 2017; Sundararajan 2017): the residual sum R - (f_c(x) -
  f_c(x_ref)) per sample, the relative residual, and for LRP methods the per-layer residuals sum R_in - sum R_out
  (which layer absorbs relevance: biases, stabilisers, dropped negative parts). Each method is charged against the
  total it promises (``reference="auto"``): a method with a reference input (Integrated Gradients, DeepLIFT,
  occlusion: their ``baseline``) against f_c(x) - f_c(x_ref) with that very reference, every other method (LRP,
  gradient x input, ...) against f_c(x). The ``reference`` column says which.
- ``non_sensitivity`` (Nguyen & Martinez 2020): features with zero relevance that the output does depend on, plus
  features with relevance that it does not depend on.
- ``input_invariance`` (Kindermans et al. 2017): the map of a model that absorbs a constant input shift in its first
  layer's bias, at the shifted input, equals the original map.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.baselines import DATA_RANGE, baseline_label
from evalxai.core.baselines import reference as reference_input
from evalxai.core.guard import derived, refresh_from
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.methods import get_method
from evalxai.methods.lrp import Recorder
from evalxai.metrics.common import (
    batched_scores,
    check_score_space,
    executed_layers,
    explain_stack,
    explainer,
    measure_rows,
    scalar_rows,
    target_scores,
)
from evalxai.metrics.registry import Passes, register_metric

_REFERENCE_PARAMS = ("mean", "low", "high", "seed")


def promised_reference(method: str | Callable | dict | None, method_params: dict | None) -> tuple[object, dict]:
    """(baseline, its parameters) of a registered method that explains against a reference input, else
    ("none", {})."""
    if not isinstance(method, str):
        return "none", {}
    spec = get_method(method)
    if "baseline" not in spec.defaults:
        return "none", {}
    params = {**spec.defaults, **(method_params or {})}
    return params["baseline"], {k: params[k] for k in _REFERENCE_PARAMS if k in params}


def _lrp_method(method: str | Callable | dict | None) -> bool:
    return isinstance(method, str) and get_method(method).family == "lrp"


def _conservation_cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """An LRP method explains once more (its recorded run gives f_c(x) and the layer residuals), any other method
    costs the forward of x; a reference other than ``none`` one more forward."""
    reference = p["reference"]
    if reference is None or reference == "auto":
        reference = promised_reference(p["method"], p["method_params"])[0]
    lrp = _lrp_method(p["method"])
    return Passes((0 if lrp else 1) + (0 if isinstance(reference, str) and reference == "none" else 1), int(lrp))


@register_metric("conservation", family="axiomatic", needs=("method",), cost=_conservation_cost,
                 directions={"residual": "none", "relative_residual": "none", "abs_relative_residual": "lower",
                             "layer_residual:*": "none"})
def conservation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                 reference: str = "auto", method: str | Callable | dict | None = None,
                 method_params: dict | None = None, mean: float | torch.Tensor | None = None,
                 low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
                 seed: int = 0) -> pd.DataFrame:
    """Rows: residual, relative_residual, abs_relative_residual (lower is better) and layer residuals.

    ``reference``: ``auto`` (the method's own, see the module docstring), ``none`` (f_c(x) alone) or a baseline of
    ``evalxai.core.baselines`` (with ``mean``, ``low``, ``high``, ``seed``). For an LRP method the recorded run that
    gives the layer residuals also gives f_c(x) (its own forward, with BatchNorm merged: equal to the model's logits up
    to rounding), so no separate forward is made."""
    rec = None
    if _lrp_method(method):
        spec = get_method(method)
        rec = Recorder()
        spec.fn(model, x, target, recorder=rec, **{**spec.defaults, **(method_params or {})})
    ref_params = {"mean": mean, "low": low, "high": high, "seed": seed}
    if reference is None or reference == "auto":
        reference, own = promised_reference(method, method_params)
        ref_params.update({k: v for k, v in own.items() if v is not None})
    with torch.no_grad():
        fx = target_scores(model(x) if rec is None else rec.logits, target, "logit")
        if reference == "none":
            fref = torch.zeros_like(fx)
        else:
            fref = target_scores(model(reference_input(x, reference, **ref_params)), target, "logit")
    delta = (fx - fref).double()
    residual = attributions.reshape(len(x), -1).double().sum(1) - delta
    relative = residual / delta.abs().clamp(min=1e-12)
    measures = [("residual", residual), ("relative_residual", relative), ("abs_relative_residual", relative.abs())]
    layers = [] if rec is None else rec.rows
    measures += [(f"layer_residual:{row['layer']}", row["relevance_in"] - row["relevance_out"]) for row in layers]
    rules = {} if rec is None else {"layer_rule": np.repeat(np.array([None] * 3 + [row["kind"] for row in layers],
                                                                     dtype=object), len(x))}
    return measure_rows(measures, **rules, reference=baseline_label(reference))


def _patch_grid(x: torch.Tensor, patch_size: int | None) -> tuple[int, tuple[int, int] | None]:
    """(patch side, patch grid (Hp, Wp)) for images; (1, None) for flat inputs (N, D): every element a feature."""
    if x.dim() == 2:
        if patch_size not in (None, 1):
            raise ValueError(f"non_sensitivity: patch_size={patch_size} needs images (N, C, H, W); flat inputs "
                             "(N, D) use single elements (patch_size=null)")
        return 1, None
    if x.dim() != 4:
        raise ValueError(f"non_sensitivity needs images (N, C, H, W) or flat inputs (N, D), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    p = max(1, round(min(h, w) / 28)) if patch_size is None else int(patch_size)
    if not 1 <= p <= min(h, w):
        raise ValueError(f"non_sensitivity: patch_size={patch_size} must be between 1 and the image side {min(h, w)}")
    return p, (math.ceil(h / p), math.ceil(w / p))


def _feature_count(x: torch.Tensor, patch_size: int | None) -> int:
    """Features of ``non_sensitivity`` on inputs shaped like x: patches of the grid, or the elements of flat inputs."""
    p, grid = _patch_grid(x, patch_size)
    return int(x[0].numel()) if grid is None else grid[0] * grid[1]


def _feature_masks(x: torch.Tensor, first: int, count: int, p: int, grid) -> torch.Tensor:
    """Boolean masks of features first..first+count-1, broadcastable against (S, N, *x.shape[1:])."""
    if grid is None:
        m = torch.zeros(count, x.shape[1], dtype=torch.bool, device=x.device)
        m[torch.arange(count), torch.arange(first, first + count)] = True
        return m.unsqueeze(1)  # (S, 1, D)
    hp, wp = grid
    m = torch.zeros(count, hp * wp, dtype=torch.bool, device=x.device)
    m[torch.arange(count), torch.arange(first, first + count)] = True
    m = m.view(count, 1, 1, hp, wp).repeat_interleave(p, 3).repeat_interleave(p, 4)
    return m[..., : x.shape[-2], : x.shape[-1]]  # (S, 1, 1, H, W)


@register_metric("non_sensitivity", family="axiomatic",
                 cost=lambda model, x, p: Passes(_feature_count(x, p["patch_size"]) + 1, 0),
                 directions={"non_sensitivity": "lower", "zero_but_sensitive": "lower",
                             "relevant_but_insensitive": "lower"})
def non_sensitivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                    eps: float = 1e-5, tolerance: float = 1e-5, patch_size: int | None = None,
                    baseline: str | float | torch.Tensor = "uniform", score_space: str = "logit", seed: int = 0,
                    batch_size: int | None = None, mean: float | torch.Tensor | None = None,
                    low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Non-sensitivity (Nguyen & Martinez 2020): zero-relevance features the output uses + relevant ones it ignores.

    |Z Δ I|, the size of the symmetric difference between the features with zero relevance Z and the features the
    output is insensitive to I (lower is better, 0 = the zero-relevance features are exactly those the output does
    not depend on).

    A feature is a ``patch_size`` x ``patch_size`` patch over all channels (None: about 28 patches along the shorter
    side, single pixels on MNIST; flat inputs: single elements). Its relevance r_p = sum |R| over the patch is zero
    when r_p <= ``eps`` * max_q r_q (relative to the sample's largest patch, so the count does not depend on the
    map's scale). The output is insensitive to it when replacing the patch alone by the ``baseline``
    (``evalxai.core.baselines``: ``uniform`` noise U[low, high] drawn per sample from ``seed`` by default, which also
    tests black pixels; ``zero``, ``mean``, ``blur``, a number) moves the target score (``score_space``) by at most
    ``tolerance``. One forward per feature and sample, the perturbed copies stacked into the batch. A prediction
    that flips under the perturbation counts as a change (no NaN). Rows: ``non_sensitivity`` (the count, in
    features), and its two parts ``zero_but_sensitive`` and ``relevant_but_insensitive``."""
    check_score_space(score_space)
    if not 0 <= eps < 1:
        raise ValueError(f"non_sensitivity: eps={eps} must be in [0, 1) (a fraction of the largest patch relevance)")
    if tolerance < 0:
        raise ValueError(f"non_sensitivity: tolerance={tolerance} must be >= 0 (score units)")
    p, grid = _patch_grid(x, patch_size)
    n = len(x)
    rel = attributions.double().abs()
    if grid is None:
        r = rel
    else:
        r = rel.sum(1, keepdim=True)
        r = F.pad(r, (0, grid[1] * p - x.shape[-1], 0, grid[0] * p - x.shape[-2]))
        r = F.avg_pool2d(r, p).flatten(1) * (p * p)
    n_features = r.shape[1]
    zero = r <= eps * r.max(1, keepdim=True).values  # (N, P); an all-zero map: every feature zero
    ref = reference_input(x, baseline, mean=mean, low=low, high=high, seed=seed)
    with torch.no_grad():
        f0 = target_scores(model(x), target, score_space)
    per_chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "non_sensitivity") // n)
    changed = torch.empty(n_features, n, dtype=torch.bool, device=x.device)
    for s0 in chunked(n_features, per_chunk, "non_sensitivity"):
        count = min(per_chunk, n_features - s0)
        xs = torch.where(_feature_masks(x, s0, count, p, grid), ref.unsqueeze(0), x.unsqueeze(0))
        scores = batched_scores(model, xs, target, score_space, batch_size)
        changed[s0:s0 + count] = (scores - f0.unsqueeze(0)).abs() > tolerance
    changed = changed.T
    zero_sensitive = (zero & changed).sum(1).double()
    relevant_insensitive = (~zero & ~changed).sum(1).double()
    out = pd.concat([scalar_rows(zero_sensitive + relevant_insensitive, "non_sensitivity"),
                     scalar_rows(zero_sensitive, "zero_but_sensitive"),
                     scalar_rows(relevant_insensitive, "relevant_but_insensitive")], ignore_index=True)
    out["baseline"] = baseline_label(baseline)
    out["score_space"] = score_space
    return out


def _first_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the first Linear or convolution the model calls on x."""
    calls = executed_layers(model, x)
    if not calls:
        raise ValueError(f"input_invariance: {type(model).__name__} calls no Linear or Conv layer, so no first-layer "
                         "bias can absorb the input shift; use a model whose first layer is Linear or Conv")
    return calls[0]


def _absorbing_layer(layer: nn.Module, shift: float) -> nn.Module:
    """A copy of ``layer`` that maps x + shift to what ``layer`` maps x to: bias b - shift * W 1; a zero-padded
    convolution pads with the value ``shift`` (an explicit constant pad before it) so the border is exact too."""
    new = copy.deepcopy(layer)
    w = new.weight.detach()
    correction = shift * w.sum(dim=tuple(range(1, w.dim())))
    bias = correction.neg() if new.bias is None else new.bias.detach() - correction
    new.bias = nn.Parameter(bias, requires_grad=False)
    if isinstance(new, nn.Linear):
        return new
    if getattr(new, "transposed", False):
        raise ValueError(f"input_invariance: the first layer is a transposed convolution ({type(layer).__name__}), "
                         "whose padding cannot absorb an input shift; use a model whose first layer is Linear or Conv")
    if new.padding_mode != "zeros":
        return new  # reflect / replicate / circular padding copies shifted values: the bias alone is exact
    dims = w.dim() - 2
    k, dil = new.kernel_size, new.dilation
    if new.padding == "valid":
        pads = [(0, 0)] * dims
    elif new.padding == "same":
        pads = [(d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2) for kk, d in zip(k, dil)]
    else:
        pads = [(int(q), int(q)) for q in new.padding]
    if not any(a or b for a, b in pads):
        return new
    new.padding = (0,) * dims
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad order: last dimension first
    pad = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[dims](tuple(flat), float(shift))
    return nn.Sequential(pad, new)


def _absorbing_copy(model: nn.Module, x: torch.Tensor, shift: float) -> tuple[nn.Module, str]:
    """(deep copy of ``model`` with its first layer absorbing ``shift``, the name of that layer: "" for the model)."""
    new = copy.deepcopy(model)
    name, layer = _first_layer(new, x)
    replacement = _absorbing_layer(layer, shift)
    if name == "":
        new = replacement
    else:
        parent, _, attr = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, attr, replacement)
    return new, name


def shift_absorbing_model(model: nn.Module, x: torch.Tensor, shift: float) -> nn.Module:
    """A deep copy of ``model`` whose first layer absorbs a constant input shift: copy(x + shift) == model(x)
    (Kindermans et al. 2017). The user's model is not changed; the equality is checked on x. The copy is ``derived``
    from the model (built once per shift and input shape while the model is unchanged), so that an explainer
    prepares it (LRP's plan, the memory probe) once."""
    key = ("shift_absorbing", shift, tuple(x.shape[1:]), x.dtype, x.device)
    new, first = derived(model, key, lambda: _absorbing_copy(model, x, shift))
    # the kept copy as the model is now (also where p.data was written in place), its first layer made again
    refresh_from(new, model, skip=(first,))
    refresh_from(new.get_submodule(first) if first else new, _absorbing_layer(model.get_submodule(first), shift))
    name = first or type(model).__name__
    with torch.no_grad():
        y, y_shifted = model(x), new(x + shift)
    err, scale = float((y_shifted - y).abs().max()), float(y.abs().max())
    tol = (1e-3 if x.dtype != torch.float64 else 1e-9) * (1 + scale)
    if not err <= tol:
        raise ValueError(f"input_invariance: the model with its first layer '{name}' absorbing the shift {shift} "
                         f"differs from the original by {err:.3g} on the shifted input: the first Linear/Conv must "
                         "receive the input directly (no preprocessing before it)")
    return new


def _shifted_params(method, method_params: dict | None, shift: float) -> dict:
    """Method parameters that live in input space (``low``, ``high``, ``mean``, a numeric ``baseline``) moved by
    ``shift``; unset bounds of a registered method that takes them are ``evalxai.core.baselines.DATA_RANGE``, moved."""
    params = dict(method_params or {})
    defaults = {}
    if isinstance(method, str):
        defaults = get_method(method).defaults
    for key, unset in (("low", DATA_RANGE[0]), ("high", DATA_RANGE[1]), ("mean", None), ("baseline", None)):
        v = params.get(key, defaults.get(key))
        if v is None and unset is not None and key in defaults:
            v = unset
        if isinstance(v, (list, tuple)):
            v = torch.as_tensor(v, dtype=torch.float64)
        if isinstance(v, torch.Tensor) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            params[key] = v + shift
    return params


@register_metric("input_invariance", family="axiomatic", needs=("method",), cost=lambda model, x, p: Passes(2, 1),
                 directions={"max_relative_difference": "lower", "unchanged_share": "higher"})
def input_invariance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                     shift: float = -1.0, tolerance: float = 1e-4, shift_bounds: bool = True,
                     method: str | Callable | dict | None = None, method_params: dict | None = None,
                     batch_size: int | None = None) -> pd.DataFrame:
    """Input invariance (Kindermans et al. 2017): is the map unchanged for a model that absorbs a constant input shift?

    Compares R'(x + c) with R(x) ("The (un)reliability of saliency methods"), where R' explains a deep copy of the
    model whose first Linear/Conv layer absorbs the constant shift c = ``shift`` in its bias (b' = b - c W 1; zero
    padding becomes padding with c), so both models give identical outputs.

    Rows per sample: ``max_relative_difference`` = max_i |R'_i - R_i| / max(max|R|, max|R'|) (lower is better, 0 =
    invariant, 0 for two all-zero maps) and ``unchanged_share`` = share of elements with |R'_i - R_i| <=
    ``tolerance`` * max(max|R|, max|R'|) (higher is better, 1 = invariant). Gradients are invariant; gradient x input
    and methods with a fixed reference point are not. ``shift_bounds``: the method's input-space parameters (box
    bounds ``low`` / ``high``, ``mean``, a numeric ``baseline``) move with the data; without it they stay put. The
    re-explanation uses ``method`` with ``method_params`` (the pipeline passes the run's). Methods whose random
    draws are seeded by the sample's content (SmoothGrad's noise, uniform baselines, the ``random`` control) draw
    other numbers at x + c, so their difference includes the change of draws."""
    if shift == 0:
        raise ValueError("input_invariance: shift=0 tests nothing; use a nonzero constant, e.g. shift=-1.0")
    if tolerance < 0:
        raise ValueError(f"input_invariance: tolerance={tolerance} must be >= 0 (a fraction of the largest |R|)")
    params = _shifted_params(method, method_params, shift) if shift_bounds else method_params
    fn = explainer(method, params, "input_invariance")
    shifted = shift_absorbing_model(model, x, float(shift))
    r2 = explain_stack(fn, shifted, (x + shift).unsqueeze(0), target, batch_size)[0]
    a, b = attributions.reshape(len(x), -1).double(), r2.reshape(len(x), -1).double()
    diff = (b - a).abs()
    scale = torch.maximum(a.abs().max(1).values, b.abs().max(1).values)
    rel = diff.max(1).values / scale.clamp(min=1e-300)
    rel = torch.where(scale > 0, rel, torch.zeros_like(rel))
    share = (diff <= tolerance * scale.unsqueeze(1)).double().mean(1)
    return measure_rows({"max_relative_difference": rel, "unchanged_share": share}, shift=float(shift))
