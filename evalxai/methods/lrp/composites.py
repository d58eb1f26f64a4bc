"""Composites: which rule each layer gets, as a plain mapping that YAML can write or override.

A composite maps (module name) -> rule, (first parametrised layer, its type) -> rule and (layer type) -> rule,
in that priority. Types are ``linear`` (nn.Linear) and ``conv`` (nn.Conv1d/2d/3d). Rules are names or
``{rule: name, **params}``; missing parameters come from the composite's shared ``params`` (``epsilon``,
``gamma``, ``alpha``, ``beta``, ``low``, ``high``, ``stabilizer``). The named composites follow zennit's
composites of the same names and defaults (epsilon = 1e-6, gamma = 0.25). ``softmax`` says how an attention's
softmax propagates: "attnlrp" (AttnLRP's rule, Achtibat et al. 2024; every composite's default) or "constant"
(CP-LRP, Ali et al. 2022: the attention weights are constants, relevance flows through the values only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from evalxai.methods.graph import layer_type
from evalxai.methods.lrp.rules import RULE_PARAMS, Rule, make_rule

SOFTMAX_RULES = ("attnlrp", "constant")
DEFAULT_PARAMS = {"epsilon": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0, "low": None, "high": None,
                  "stabilizer": 1e-6}


@dataclass
class Composite:
    """Rule mapping: ``names`` beats ``first`` beats ``layers``; ``softmax``: the attention softmax's rule."""

    layers: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    softmax: str = "attnlrp"

    def __post_init__(self):
        if self.softmax not in SOFTMAX_RULES:
            raise ValueError(f"composite softmax='{self.softmax}' is unknown: use one of {list(SOFTMAX_RULES)}")
        self.params = {**DEFAULT_PARAMS, **(self.params or {})}
        bad = set(self.layers) | set(self.first)
        bad -= {"linear", "conv"}
        if bad:
            raise KeyError(f"composite layer types {sorted(bad)} are unknown: use 'linear' or 'conv'")
        self._cache: dict = {}
        for spec in [*self.layers.values(), *self.first.values(), *self.names.values()]:
            if spec is not None:
                make_rule(spec, self.params)  # validate parameters now, not mid-backward

    def used_params(self) -> set[str]:
        """The shared parameters its rules read (``stabilizer`` always: additions and pooling use it)."""
        used = {"stabilizer"}
        for spec in [*self.layers.values(), *self.first.values(), *self.names.values()]:
            if isinstance(spec, (str, dict)) or hasattr(spec, "keys"):
                rule = spec if isinstance(spec, str) else dict(spec).get("rule")
                used |= set(RULE_PARAMS.get(rule, ())) - set(() if isinstance(spec, str) else dict(spec))
        return used

    def rule_for(self, name: str, module: nn.Module, is_first: bool) -> Rule:
        kind = layer_type(module)
        spec = self.names.get(name)
        if spec is None and is_first:
            spec = self.first.get(kind)
        if spec is None:
            spec = self.layers.get(kind)
        if spec is None:
            raise KeyError(f"composite gives no rule for layer '{name}' ({type(module).__name__}): add "
                           f"'{kind}' to its layers or '{name}' to its names")
        key = repr(spec)
        if key not in self._cache:
            self._cache[key] = make_rule(spec, self.params)
        return self._cache[key]


_BOTH_FLAT = {"linear": "flat", "conv": "flat"}
# name -> (layers, first, default params)
COMPOSITES: dict[str, tuple[dict, dict, dict]] = {
    "lrp_0": ({"linear": "zero", "conv": "zero"}, {}, {"stabilizer": 0.0}),
    "lrp_epsilon": ({"linear": "epsilon", "conv": "epsilon"}, {}, {"epsilon": 0.25}),
    "lrp_gamma": ({"linear": "gamma", "conv": "gamma"}, {}, {}),
    "lrp_alpha1beta0": ({"linear": "alphabeta", "conv": "alphabeta"}, {}, {"alpha": 1.0, "beta": 0.0}),
    "lrp_alpha2beta1": ({"linear": "alphabeta", "conv": "alphabeta"}, {}, {"alpha": 2.0, "beta": 1.0}),
    "lrp_zplus": ({"linear": "zplus", "conv": "zplus"}, {}, {}),
    "lrp_wsquare": ({"linear": "zplus", "conv": "zplus"}, {"linear": "wsquare", "conv": "wsquare"}, {}),
    "lrp_flat": ({"linear": "zplus", "conv": "zplus"}, dict(_BOTH_FLAT), {}),
    "dtd": ({"linear": "zplus", "conv": "zplus"}, {"linear": "box", "conv": "box"}, {}),
    "lrp_epsilon_plus": ({"linear": "epsilon", "conv": "zplus"}, {}, {}),
    "lrp_epsilon_plus_flat": ({"linear": "epsilon", "conv": "zplus"}, dict(_BOTH_FLAT), {}),
    "lrp_epsilon_gamma_box": ({"linear": "epsilon", "conv": "gamma"}, {"conv": "box"}, {}),
    "lrp_epsilon_alpha2beta1": ({"linear": "epsilon", "conv": "alphabeta"}, {}, {"alpha": 2.0, "beta": 1.0}),
    "lrp_epsilon_alpha2beta1_flat": ({"linear": "epsilon", "conv": "alphabeta"}, dict(_BOTH_FLAT),
                                     {"alpha": 2.0, "beta": 1.0}),
}


def make_composite(name: str | None = None, *, layers: dict | None = None, first: dict | None = None,
                   names: dict | None = None, softmax: str = "attnlrp", **params: float) -> Composite:
    """A named composite with overrides: ``params`` (epsilon, gamma, ...) and ``layers``/``first``/``names`` maps."""
    base_layers, base_first, base_params = ({}, {}, {})
    if name is not None:
        if name not in COMPOSITES:
            raise KeyError(f"unknown LRP composite '{name}': choose one of {sorted(COMPOSITES)}")
        base_layers, base_first, base_params = COMPOSITES[name]
    return Composite(layers={**base_layers, **(layers or {})}, first={**base_first, **(first or {})},
                     names=dict(names or {}), params={**base_params, **params}, softmax=softmax)
