"""Relative stability of explanations (Agarwal et al. 2022, "Rethinking stability for attribution-based
explanations"): how much the map changes, relative to how much the input (RIS), an internal representation (RRS) or
the logits (ROS) change, at the worst of ``samples`` noisy neighbours that keep the prediction.

    RIS = max_s ||(R - R_s) / R||_p / max(||(x - x_s) / x||_p, eps_min)
    RRS = max_s ||(R - R_s) / R||_p / max(||(L - L_s) / L||_p, eps_min)
    ROS = max_s ||(R - R_s) / R||_p / max(||h - h_s||_p, eps_min)

R = R(x), R_s = R(x_s) (the method re-explains each neighbour), L = an internal representation, h = the logits;
divisions inside the norms are element-wise (percent change). Neighbours: x_s = x + N(0, noise^2) element-wise,
seeded per sample (``evalxai.core.seeding``), clipped into [low, high] when given. Lower is better.

Division by zero. The paper bounds the denominator's norm below by ``eps_min`` (the max above): done as written
(Quantus 0.6 instead adds eps_min only where the norm is exactly 0). Inside the norms an element with a zero
reference (R_i = 0, x_i = 0 or L_i = 0) would divide by zero, which the paper does not address: such an element is
divided by ``eps_min`` instead, as in Quantus 0.6 (its percent change counts as huge): ``zero_reference="eps_min"``,
the default. On images with many zero pixels (MNIST) or ReLU representations these elements dominate the norms
(ROS / RRS reach 1e4-1e6 on LeNet): ``zero_reference="skip"`` leaves elements with a zero reference out of the
norms instead (an evalxai option, not in the paper). A map that is zero everywhere: NaN.

Prediction flips. The paper takes the max over neighbours with the same predicted class (argmax of the logits) as
x, so ``nan_on_flip=True`` (default) leaves flipped draws out and a sample with no draw left is NaN. Quantus 0.6
instead makes the whole sample NaN as soon as one draw flips. ``flip_rate`` rows (direction "none") say how many
draws flipped. Quantus 0.6 draws its default noise from U[0.02, 0.2] (a one-sided brightening), not zero-mean.

Cost per sample: ``samples`` explains and ``samples`` + 1 forwards (RRS: the forwards also capture the layer).
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from evalxai.core.memory import images_per_chunk
from evalxai.metrics.common import executed_layers, explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import Passes, register_metric
from evalxai.metrics.robustness import (
    check_positive,
    check_samples,
    flip_rows,
    gaussian_neighbours,
    reduce_draws,
    stack_logits,
)


def penultimate(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last Linear / Conv module that a forward pass of x[:1] *executes* (``executed_layers``: the
    order of the calls, not of registration). Its input is the penultimate representation."""
    calls = executed_layers(model, x)
    if not calls:
        raise ValueError(f"relative_representation_stability found no Linear or Conv layer in "
                         f"{type(model).__name__}: give layer=<module name> (one of {_names(model)})")
    return calls[-1][0]


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n][:20]


@torch.no_grad()
def logits_and_representation(model: nn.Module, xs: torch.Tensor, layer: str, use_input: bool,
                              batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (S, N, classes) and the representation (S, N, D) of a stack of inputs (S, N, ...): the input
    (``use_input``) or output of module ``layer``, captured by a forward hook removed afterwards."""
    module = dict(model.named_modules())[layer]
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    step = images_per_chunk(model, flat, "forward", batch_size, "forwarding perturbed inputs")
    captured: list[torch.Tensor] = []

    def hook(mod, inp, out):
        t = inp[0] if use_input else out
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"layer '{layer}' {'takes' if use_input else 'returns'} {type(t).__name__}, not a "
                             "tensor: choose another layer for relative_representation_stability")
        captured.append(t.detach().reshape(len(t), -1).clone())  # an in-place op later must not change it

    handle = module.register_forward_hook(hook)
    try:
        logits = []
        for i in range(0, len(flat), step):
            before = len(captured)
            logits.append(model(flat[i:i + step]))
            if len(captured) != before + 1:
                raise ValueError(f"layer '{layer}' ran {len(captured) - before} times in one forward pass: "
                                 "relative_representation_stability needs a module that runs exactly once")
    finally:
        handle.remove()
    return torch.cat(logits).view(s, n, -1), torch.cat(captured).view(s, n, -1)


ZERO_REFERENCE = ("eps_min", "skip")


def _cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """``samples`` explains; x and its ``samples`` neighbours forwarded (module docstring)."""
    return Passes(int(p["samples"]) + 1, int(p["samples"]))


def _relative(ref: torch.Tensor, other: torch.Tensor, eps_min: float, zero_reference: str = "eps_min"
              ) -> torch.Tensor:
    """(ref - other) / ref element-wise, float64 (S, N, D). An element with ref = 0 is divided by eps_min
    (``eps_min``) or contributes 0, i.e. is left out of the norm (``skip``)."""
    ref = ref.double()
    zero = ref == 0
    out = (ref - other.double()) / torch.where(zero, torch.full_like(ref, eps_min), ref)
    return torch.where(zero, torch.zeros_like(out), out) if zero_reference == "skip" else out


def _check(p, eps_min, noise, samples, zero_reference, metric):
    if zero_reference not in ZERO_REFERENCE:
        raise ValueError(f"zero_reference='{zero_reference}' must be one of {list(ZERO_REFERENCE)} (metric "
                         f"'{metric}': how an element with a zero reference enters a percent change)")
    check_positive("noise", noise, metric, "the Gaussian noise sigma in input units")
    check_samples(samples, metric)
    if not eps_min > 0:
        raise ValueError(f"eps_min={eps_min} must be > 0 for metric '{metric}' (the lower bound of the denominator)")
    if not (p == float("inf") or p >= 1):
        raise ValueError(f"p={p} must be >= 1 or inf for metric '{metric}' (the L_p norm)")


def relative_stability(kind: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       samples: int, noise: float, p: int | float, eps_min: float, seed: int, nan_on_flip: bool,
                       zero_reference: str, layer: str | None, method: str | Callable | dict | None,
                       method_params: dict | None, batch_size: int | None, low: float | torch.Tensor | None,
                       high: float | torch.Tensor | None) -> pd.DataFrame:
    """The three relative stabilities share everything but the denominator (``kind``: input, output,
    representation)."""
    metric = f"relative_{kind}_stability"
    _check(p, eps_min, noise, samples, zero_reference, metric)
    fn = explainer(method, method_params, metric)
    n = len(x)
    xs = gaussian_neighbours(x, seed, samples, noise, low, high)
    rs = explain_stack(fn, model, xs, target, batch_size)
    flat_r = attributions.reshape(1, n, -1)
    num = torch.linalg.vector_norm(_relative(flat_r, rs.reshape(samples, n, -1), eps_min, zero_reference), ord=p,
                                   dim=-1)
    stack = torch.cat([x.unsqueeze(0), xs])
    if kind == "representation":
        use_input = layer is None
        name = penultimate(model, x) if use_input else layer
        if name not in dict(model.named_modules()):
            raise ValueError(f"layer='{layer}' is not a module of {type(model).__name__} (metric '{metric}'): "
                             f"choose one of {_names(model)}")
        logits, rep = logits_and_representation(model, stack, name, use_input, batch_size)
        den = torch.linalg.vector_norm(_relative(rep[:1], rep[1:], eps_min, zero_reference), ord=p, dim=-1)
    else:
        logits = stack_logits(model, stack, batch_size)
        if kind == "input":
            den = torch.linalg.vector_norm(_relative(x.reshape(1, n, -1), xs.reshape(samples, n, -1), eps_min,
                                                     zero_reference),
                                           ord=p, dim=-1)
        else:
            den = torch.linalg.vector_norm((logits[:1] - logits[1:]).double(), ord=p, dim=-1)
    ratio = num / den.clamp(min=eps_min)
    zero_map = (flat_r[0] == 0).all(-1)
    ratio = torch.where(zero_map.unsqueeze(0), torch.full_like(ratio, float("nan")), ratio)
    flipped = logits[1:].argmax(-1) != logits[0].argmax(-1)
    out = pd.concat([scalar_rows(reduce_draws(ratio, flipped if nan_on_flip else None, "max"), metric),
                     flip_rows(flipped)], ignore_index=True)
    if kind == "representation":
        out["layer"] = name
    return out


@register_metric("relative_input_stability", family="robustness", needs=("method",), cost=_cost,
                 directions={"relative_input_stability": "lower", "flip_rate": "none"})
def relative_input_stability(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                             samples: int = 10, noise: float = 0.05, p: int = 2, eps_min: float = 1e-6, seed: int = 0,
                             nan_on_flip: bool = True, zero_reference: str = "eps_min",
                             method: str | Callable | dict | None = None, method_params: dict | None = None,
                             batch_size: int | None = None, low: float | torch.Tensor | None = None,
                             high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Relative input stability (Agarwal et al. 2022): max_s ||(R - R_s)/R||_p / max(||(x - x_s)/x||_p, eps_min).

    Lower is better; not invariant to rescaling the input. Definitions, division by zero, flips: module docstring.
    """
    return relative_stability("input", model, x, target, attributions, samples, noise, p, eps_min, seed, nan_on_flip,
                              zero_reference, None, method, method_params, batch_size, low, high)


@register_metric("relative_output_stability", family="robustness", needs=("method",), cost=_cost,
                 directions={"relative_output_stability": "lower", "flip_rate": "none"})
def relative_output_stability(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                              samples: int = 10, noise: float = 0.05, p: int = 2, eps_min: float = 1e-6, seed: int = 0,
                              nan_on_flip: bool = True, zero_reference: str = "eps_min",
                              method: str | Callable | dict | None = None, method_params: dict | None = None,
                              batch_size: int | None = None, low: float | torch.Tensor | None = None,
                              high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """Relative output stability (Agarwal et al. 2022): max_s ||(R - R_s)/R||_p / max(||h(x) - h(x_s)||_p, eps_min).

    h = the logits (all classes). Lower is better. Definitions, division by zero, flips: module docstring.
    """
    return relative_stability("output", model, x, target, attributions, samples, noise, p, eps_min, seed,
                              nan_on_flip, zero_reference, None, method, method_params, batch_size, low, high)


@register_metric("relative_representation_stability", family="robustness", needs=("method",), cost=_cost,
                 directions={"relative_representation_stability": "lower", "flip_rate": "none"})
def relative_representation_stability(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                                      attributions: torch.Tensor, samples: int = 10, noise: float = 0.05, p: int = 2,
                                      eps_min: float = 1e-6, seed: int = 0, nan_on_flip: bool = True,
                                      zero_reference: str = "eps_min", method: str | Callable | dict | None = None,
                                      method_params: dict | None = None, batch_size: int | None = None,
                                      low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
                                      layer: str | None = None) -> pd.DataFrame:
    """Relative representation stability (Agarwal et al. 2022): max_s ||(R - R_s)/R||_p / max(||(L - L_s)/L||_p,
    eps_min).

    L = the output of module ``layer`` (a name of ``model.named_modules()``), flattened. Default (None): the
    penultimate representation, i.e. the input of the last Linear / Conv module that the forward pass executes
    (found once by temporary hooks, whatever the registration order; a ReLU network's zero activations there
    divide by eps_min, module docstring). Quantus 0.6 instead concatenates every layer's output unless told
    which. The rows carry the layer's name. Lower is better.
    """
    return relative_stability("representation", model, x, target, attributions, samples, noise, p, eps_min, seed,
                              nan_on_flip, zero_reference, layer, method, method_params, batch_size, low, high)
