"""Foreign explainers as plug-ins: a config with ``_target_`` naming a captum attribution class or any callable.

    {_target_: captum.attr.IntegratedGradients, n_steps: 32}            # attribute(x, target=t, n_steps=32)
    {_target_: captum.attr.LayerGradCam, init: {layer: features}}       # constructor args; module names resolved
    {_target_: mypkg.explainers.my_map, alpha: 2}                       # my_map(model, x, target, alpha=2)

A class with an ``attribute`` method (captum's ``Attribution`` interface) is built as ``cls(model, **init)``;
string values of ``layer`` / ``layers`` in ``init`` are looked up as module names of the model. Anything else
must be a callable ``f(model, x, target, **params) -> Tensor`` shaped like x.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from evalxai.methods.cam import upsample


def import_object(path: str) -> Any:
    """The object at a dotted import path (``package.module.Name``)."""
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ValueError(f"_target_ '{path}' must be a dotted path such as captum.attr.IntegratedGradients")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"_target_ '{path}' needs the package '{err.name}': pip install it "
                                  f"(captum: pip install -c constraints.txt captum)") from None
    except AttributeError:
        raise ValueError(f"_target_ '{path}': module '{module}' has no attribute '{name}'") from None


def _resolve_layers(model, init: dict) -> dict:
    out = dict(init)
    for key in ("layer", "layers"):
        v = out.get(key)
        if isinstance(v, str):
            out[key] = model.get_submodule(v)
        elif isinstance(v, (list, tuple)):
            out[key] = [model.get_submodule(s) if isinstance(s, str) else s for s in v]
    return out


def foreign_method(spec: dict) -> Callable:
    """``f(model, x, target) -> Tensor`` for a ``_target_`` config (see module docstring)."""
    spec = dict(spec)
    spec.pop("name", None)
    obj = import_object(spec.pop("_target_"))
    init = dict(spec.pop("init", None) or {})
    if isinstance(obj, type) and hasattr(obj, "attribute"):
        def run(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            explainer = obj(model, **_resolve_layers(model, init))
            out = explainer.attribute(x, target=target, **spec)
            out = out[0] if isinstance(out, tuple) else out
            if out.shape != x.shape and out.dim() == x.dim() and out.shape[1] == 1:  # layer maps: upsample
                out = upsample(out[:, 0], x)
            return out
        return run
    if init:
        raise ValueError(f"_target_ {obj!r} is not an attribution class: 'init' applies to classes only")
    if not callable(obj):
        raise TypeError(f"_target_ {obj!r} is not callable: name a captum attribution class or a function "
                        "f(model, x, target, **params)")
    return lambda model, x, target: obj(model, x, target, **spec)
