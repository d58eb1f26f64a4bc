"""Registers every LRP composite as a method: ``explain(..., method="lrp_epsilon_plus", epsilon=0.1)``.

A method takes exactly the parameters its composite's rules read (``lrp_0`` has no ``epsilon``), plus
``composite``, a mapping that overrides its ``layers``/``first``/``names`` and may carry parameters of the rules
it brings in (``composite={"layers": {"conv": "gamma"}, "gamma": 0.5}``). A parameter no rule reads is an error.
"""
from __future__ import annotations

from evalxai.explain.lrp.composites import COMPOSITES, DEFAULT_PARAMS, make_composite
from evalxai.explain.lrp.engine import Recorder, run_lrp
from evalxai.explain.registry import METHODS, MethodSpec

_MAPS = ("layers", "first", "names")


def _make(name: str):
    def lrp_method(model, x, target, composite=None, recorder: Recorder | None = None, **params):
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
