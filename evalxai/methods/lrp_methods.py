"""Registers every LRP composite as a method: ``explain(..., method="lrp_epsilon_plus", epsilon=0.1)``.

A method takes exactly the parameters its composite's rules read (``lrp_0`` has no ``epsilon``), plus
``composite``, a mapping that overrides its ``layers``/``first``/``names`` and may carry parameters of the rules
it brings in (``composite={"layers": {"conv": "gamma"}, "gamma": 0.5}``). A parameter no rule reads is an error.
"""
from __future__ import annotations

import torch
from torch import nn

from evalxai.methods.lrp.composites import COMPOSITES, DEFAULT_PARAMS, make_composite
from evalxai.methods.lrp.engine import Recorder, run_lrp
from evalxai.methods.registry import METHODS, MethodSpec

_MAPS = ("layers", "first", "names")


def _make(name: str):
    def lrp_method(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: dict | None = None,
                   recorder: Recorder | None = None, **params: float) -> torch.Tensor:
        """LRP with a named composite; ``composite`` may override its ``layers``/``first``/``names`` maps."""
        overrides = dict(composite or {})
        comp = make_composite(name, **overrides, **params)
        given = set(params) | (set(overrides) - set(_MAPS))
        unused = given - comp.used_params()
        if unused:
            raise TypeError(f"method '{name}' has no parameter {sorted(unused)}: its rules read only "
                            f"{sorted(comp.used_params())}")
        relevance, _ = run_lrp(model, x, target, comp, recorder)
        return relevance

    layers, first, _ = COMPOSITES[name]
    lrp_method.__name__ = name
    lrp_method.__doc__ = (f"LRP composite. layers: {layers}; first layer: {first or 'same as layers'}.\n"
                          "`composite` may override: {layers: {conv: gamma}, first: {conv: box}, names: {features.0: "
                          "flat}} and carry the parameters of the rules it brings in.")
    return lrp_method


for _name, (_layers, _first, _params) in COMPOSITES.items():
    _used = make_composite(_name).used_params()
    METHODS[_name] = MethodSpec(_name, _make(_name), {**{k: v for k, v in {**DEFAULT_PARAMS, **_params}.items()
                                                          if k in _used}, "composite": None}, "lrp")


def _transformer_method(name: str, softmax: str):
    def method(model: nn.Module, x: torch.Tensor, target: torch.Tensor, epsilon: float = 1e-6,
               composite: dict | None = None, recorder: Recorder | None = None) -> torch.Tensor:
        overrides = dict(composite or {})
        maps = {k: overrides.pop(k) for k in _MAPS if k in overrides}
        comp = make_composite(None, layers={"linear": "epsilon", "conv": "epsilon", **(maps.pop("layers", None) or {})},
                              **maps, softmax=softmax, **{"epsilon": epsilon, "stabilizer": epsilon, **overrides})
        relevance, _ = run_lrp(model, x, target, comp, recorder)
        return relevance

    title = ("AttnLRP (Achtibat et al. 2024): softmax by R_in = x (R - s sum R), uniform rule on q k^T and A v."
             if softmax == "attnlrp" else
             "CP-LRP (Ali et al. 2022): attention weights held constant, relevance through the values only.")
    method.__name__ = name
    method.__doc__ = (f"{title}\n\nLRP for transformers: the epsilon rule on Linear/Conv layers and on "
                      "LayerNorm/RMSNorm (normaliser held constant), the identity rule on element-wise activations, "
                      "the uniform rule on products of two tensors. One ``epsilon`` stabilises every division "
                      "(linear layers, normalisation, products, residual additions); epsilon = 0 is LXT's gradient "
                      "x input form.")
    return method


for _name, _softmax in (("attnlrp", "attnlrp"), ("cp_lrp", "constant")):
    METHODS[_name] = MethodSpec(_name, _transformer_method(_name, _softmax), {"epsilon": 1e-6, "composite": None},
                                "lrp")
