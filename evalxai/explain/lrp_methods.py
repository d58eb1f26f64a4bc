"""Registers every LRP composite as a method: ``explain(..., method="lrp_epsilon_plus", epsilon=0.1)``."""
from __future__ import annotations

from evalxai.explain.lrp.composites import COMPOSITES, DEFAULT_PARAMS, make_composite
from evalxai.explain.lrp.engine import Recorder, run_lrp
from evalxai.explain.registry import METHODS, MethodSpec


def _make(name: str):
    def lrp_method(model, x, target, composite=None, recorder: Recorder | None = None, **params):
        """LRP with a named composite; ``composite`` may override its ``layers``/``first``/``names`` maps."""
        comp = make_composite(name, **dict(composite or {}), **params)
        relevance, _ = run_lrp(model, x, target, comp, recorder)
        return relevance

    lrp_method.__name__ = name
    return lrp_method


for _name, (_layers, _first, _params) in COMPOSITES.items():
    METHODS[_name] = MethodSpec(_name, _make(_name), {**DEFAULT_PARAMS, **_params, "composite": None}, "lrp")
