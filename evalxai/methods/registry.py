"""The method registry: config name -> function ``f(model, x, target, **params) -> Tensor`` and its defaults."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)
    family: str = "gradient"


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, family: str = "gradient", **defaults):
    """Decorator: register ``fn`` under ``name`` (= ``conf/method/<name>.yaml``) with default parameters."""
    def wrap(fn):
        METHODS[name] = MethodSpec(name, fn, defaults, family)
        return fn
    return wrap


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}': choose one of {sorted(METHODS)}")
    return METHODS[name]
