"""Activation maximization: the input a model takes as the prototype of a class (Montavon, Samek & Mueller 2018, §3).

Input space (their eq. 1): ``x* = argmax_x log p(c|x) - lam ||x - xbar||^2``, xbar the data mean (0 without one),
x kept within the data range [low, high] (projected after every step; by default ``evalxai.core.baselines.DATA_RANGE``,
[0, 1], as explain's and score's black and uniform baselines).
Code space (their eq. 3; Nguyen et al. 2016): ``z* = argmax_z log p(c|g(z)) - lam ||z||^2`` and ``x* = g(z*)``,
g the decoder of a generative model of the data (``evalxai.generators``).
Both ascend with Adam (cosine-annealed step size) for a fixed number of steps, all targets in one batch; Adam's
update is elementwise and the objective a sum over targets, so each prototype is the one it would be alone.
The model (and the generator) are left as they were: no hooks, same parameters, ``requires_grad`` flags and mode.

``python -m evalxai.maximization experiment=NAME`` (``evalxai.maximization.cli``) makes the prototypes of every class
in both spaces and scores how natural they are (``evalxai.maximization.naturalness``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from evalxai.core.baselines import data_range
from evalxai.core.guard import frozen
from evalxai.generators import get_generator

SPACES = ("input", "code")
STARTS = ("mean", "noise")
# Per space: the weight lam of the regulariser, Adam's steps and initial step size, the start.
DEFAULTS = {
    "input": {"lam": 1e-4, "steps": 600, "lr": 0.1, "start": "mean", "restarts": 1, "low": None, "high": None,
              "input_shape": None, "seed": 0},
    "code": {"lam": 1e-4, "steps": 600, "lr": 0.3, "start": "mean", "restarts": 1, "seed": 0},
}
NO_GENERATOR = ("maximize(space='code') needs a generator: pass generator='vae_mnist' (a config of conf/generator/, "
                "trained on first use and cached), generator=evalxai.generators.get_generator('vae_mnist'), or a "
                "decoder module with a latent_dim attribute; `python -m evalxai.maximization experiment=NAME` picks "
                "vae_<dataset> itself")


def target_log_prob(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(c|x) = log_softmax(f(x))_c per sample."""
    return log_prob_of(model(x), target)


def log_prob_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)_c per sample: ``target_log_prob`` of logits already computed."""
    return torch.log_softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)


def _targets(target, device) -> torch.Tensor:
    t = torch.as_tensor(target)
    if t.dim() == 0:
        t = t.view(1)
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or len(t) == 0:
        raise ValueError(f"maximize: target must be an int or a non-empty 1-d int tensor of class indices, got "
                         f"{target!r}")
    return t.long().to(device)


def _params(space: str, params: dict) -> dict:
    unknown = sorted(set(params) - set(DEFAULTS[space]))
    if unknown:
        raise ValueError(f"maximize(space='{space}') has no parameter {unknown}: it takes "
                         f"{sorted(DEFAULTS[space])} (plus generator= and mean=)")
    p = {**DEFAULTS[space], **params}
    if p["start"] not in STARTS:
        raise ValueError(f"maximize: start='{p['start']}' is unknown: choose one of {list(STARTS)}")
    if float(p["lam"]) < 0 or int(p["steps"]) < 0 or float(p["lr"]) <= 0 or int(p["restarts"]) < 1:
        raise ValueError(f"maximize: lam={p['lam']}, steps={p['steps']}, lr={p['lr']}, restarts={p['restarts']} must "
                         "be lam >= 0, steps >= 0, lr > 0, restarts >= 1")
    return p


def _draw(shape, seed: int, target: torch.Tensor, kind: str, restart: int = 0) -> torch.Tensor:
    """One draw per target, from a generator seeded by (seed, class, restart): the same start whatever the batch."""
    out = torch.empty(len(target), *shape, dtype=torch.float64)
    for i, c in enumerate(target.tolist()):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(c) * 7919 + int(restart) * 104_729 + 17) % 2**63)
        out[i].normal_(generator=g) if kind == "normal" else out[i].uniform_(generator=g)
    return out


def ascend(objective: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int, lr: float,
           project: Callable[[torch.Tensor], object] | None = None) -> torch.Tensor:
    """Maximise ``objective(v).sum()`` over v with Adam, step size cosine-annealed from ``lr`` to 0 over
    ``steps``; ``project`` (in place, no grad) after each step keeps v feasible."""
    v = v0.detach().clone().requires_grad_(True)
    if steps == 0:
        return v.detach()
    opt = torch.optim.Adam([v], lr=lr)
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * k / steps))
        opt.zero_grad(set_to_none=True)
        (-objective(v).sum()).backward()
        opt.step()
        if project is not None:
            with torch.no_grad():
                project(v)
    return v.detach()


def _model_dtype(model: nn.Module, fallback: torch.Tensor | None):
    p = next(model.parameters(), None)
    if p is not None:
        return p.dtype, p.device
    return (fallback.dtype, fallback.device) if fallback is not None else (torch.float32, torch.device("cpu"))


def maximize(model: nn.Module, target: int | Sequence[int] | torch.Tensor, space: str = "input",
             generator: nn.Module | str | None = None, mean: torch.Tensor | None = None,
             **params: Any) -> torch.Tensor:
    """Prototypes of the classes ``target``: one input per target, shape (N, *input_shape), by activation
    maximization in input or code space (see the module docstring).

    model: the classifier whose logit of each target class is maximised.
    target: an int or a 1-d sequence / tensor of class indices (N of them).
    space: "input" (optimise the input directly) or "code" (optimise a generator's code z).
    generator: for ``space="code"``, a module g mapping codes (N, latent_dim) to inputs with a ``latent_dim``
        attribute (``evalxai.generators.Generator``), or the name of a config in ``conf/generator/``.
    mean: xbar of the input-space objective (an image or a batch of one, model space); None: the regulariser
        pulls towards 0.
    params: ``lam`` (weight of the squared-norm regulariser), ``steps``, ``lr`` (Adam's initial step size),
        ``start`` ("mean": xbar, or z = 0; "noise": uniform in [low, high] (finite bounds, else xbar + N(0, 1)),
        or z ~ N(0, I)), ``restarts`` (R: the chosen start and R - 1 noise starts per target, optimised together; the
        one with the highest objective is kept), ``seed`` (noise starts, drawn per class and restart); input space also
        ``low`` / ``high`` (the data range, floats or tensors broadcastable to one input; None:
        ``evalxai.core.baselines.data_range``'s default, [0, 1]; -inf / inf: unbounded) and
        ``input_shape`` (when no mean is given).

    Example:
        >>> import torch, evalxai
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> evalxai.maximize(model, [0, 2], input_shape=(1, 4, 4), steps=5).shape
        torch.Size([2, 1, 4, 4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"maximize: model must be a torch.nn.Module, got {type(model).__name__}")
    if space not in SPACES:
        raise ValueError(f"maximize: space='{space}' is unknown: choose 'input' or 'code'")
    p = _params(space, params)
    if space == "code":
        if generator is None:
            raise ValueError(NO_GENERATOR)
        if isinstance(generator, str):
            generator = get_generator(generator)
        latent = getattr(generator, "latent_dim", None)
        if not isinstance(generator, nn.Module) or latent is None:
            raise ValueError(f"maximize: generator {type(generator).__name__} is not a module with a latent_dim "
                             f"attribute. {NO_GENERATOR}")
        return _code_space(model, target, generator, int(latent), p)
    return _input_space(model, target, mean, p)


def _starts(p: dict, t: torch.Tensor, shape, first: torch.Tensor, noise) -> torch.Tensor:
    """Starts (N * restarts, *shape), restarts of one target adjacent: restart 0 from ``first`` (the chosen start),
    the others from ``noise(restart)``."""
    r = int(p["restarts"])
    if r == 1:
        return first
    stack = [first] + [noise(k) for k in range(1, r)]
    return torch.stack(stack, 1).reshape(len(t) * r, *shape)


def _best(v: torch.Tensor, objective, r: int) -> torch.Tensor:
    """Per target, the restart with the highest objective."""
    if r == 1:
        return v
    with torch.no_grad():
        pick = objective(v).view(-1, r).argmax(1)
    return v.view(-1, r, *v.shape[1:])[torch.arange(len(pick)), pick]


def _input_space(model: nn.Module, target, mean, p: dict) -> torch.Tensor:
    dtype, device = _model_dtype(model, mean if isinstance(mean, torch.Tensor) else None)
    if mean is not None:
        mean = torch.as_tensor(mean)
        shape = tuple(mean.shape[1:]) if mean.dim() > 1 and mean.shape[0] == 1 else tuple(mean.shape)
        if p["input_shape"] is not None and tuple(p["input_shape"]) != shape:
            raise ValueError(f"maximize: input_shape={tuple(p['input_shape'])} differs from the mean's shape {shape}")
    elif p["input_shape"] is not None:
        shape = tuple(int(s) for s in p["input_shape"])
    else:
        raise ValueError("maximize(space='input') needs the input shape: pass mean= (the data mean image, xbar of "
                         "the objective) or input_shape=(C, H, W)")
    center = torch.zeros(1, *shape, dtype=dtype, device=device) if mean is None else \
        mean.reshape(1, *shape).to(dtype=dtype, device=device)
    t = _targets(target, device)
    low, high = data_range(p["low"], p["high"], center)
    finite = bool(torch.isfinite(low).all() and torch.isfinite(high).all())

    def noise(k):
        if finite:
            return low + (high - low) * _draw(shape, p["seed"], t, "uniform", k).to(center)
        return center + _draw(shape, p["seed"], t, "normal", k).to(center)

    first = noise(0) if p["start"] == "noise" else center.expand(len(t), *shape)
    x0 = _starts(p, t, shape, first, noise).clone()
    tr = t.repeat_interleave(int(p["restarts"]))

    def project(x):
        torch.maximum(x, low.expand_as(x), out=x)
        torch.minimum(x, high.expand_as(x), out=x)

    project(x0)
    lam = float(p["lam"])

    def objective(x):
        return target_log_prob(model, x, tr) - lam * (x - center).pow(2).flatten(1).sum(1)

    with frozen(model):
        _check_targets(model, x0[:1], t)
        return _best(ascend(objective, x0, int(p["steps"]), float(p["lr"]), project), objective, int(p["restarts"]))


def _code_space(model: nn.Module, target, generator: nn.Module, latent: int, p: dict) -> torch.Tensor:
    dtype, device = _model_dtype(model, None)
    t = _targets(target, device)
    gdtype = next(generator.parameters(), torch.empty(0, dtype=dtype)).dtype

    def noise(k):
        return _draw((latent,), p["seed"], t, "normal", k).to(dtype=gdtype, device=device)

    first = noise(0) if p["start"] == "noise" else torch.zeros(len(t), latent, dtype=gdtype, device=device)
    z0 = _starts(p, t, (latent,), first, noise)
    tr = t.repeat_interleave(int(p["restarts"]))
    lam = float(p["lam"])

    def objective(z):
        return target_log_prob(model, generator(z).to(dtype), tr) - lam * z.pow(2).sum(1)

    with frozen(model), frozen(generator):
        _check_targets(model, generator(z0[:1]).to(dtype), t)
        z = _best(ascend(objective, z0, int(p["steps"]), float(p["lr"])), objective, int(p["restarts"]))
        with torch.no_grad():
            return generator(z).to(dtype)


def _check_targets(model: nn.Module, x1: torch.Tensor, t: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(x1)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("maximize: the model must return logits of shape (N, classes)")
    bad = sorted({int(c) for c in t.tolist() if not 0 <= c < out.shape[1]})
    if bad:
        raise ValueError(f"maximize: target classes {bad} are out of range for a model with {out.shape[1]} outputs")


__all__ = ["DEFAULTS", "SPACES", "ascend", "maximize", "target_log_prob"]
