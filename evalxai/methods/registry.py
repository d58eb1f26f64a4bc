"""The method registry: config name -> function ``f(model, x, target, **params) -> Tensor`` and its defaults.

A method's defaults are its function's keyword defaults (``signature_defaults``), declared nowhere else:
``register_method`` takes only the name and the family.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass, field


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)
    family: str = "gradient"


METHODS: dict[str, MethodSpec] = {}


def signature_defaults(fn: Callable, leading: int, skip: Collection[str] = (), what: str = "") -> dict:
    """The config fields of a registered function: its parameters after the first ``leading`` (less ``skip``) with
    their defaults, in signature order. Each needs a default, and ``**kwargs`` is refused: a config file lists them."""
    out = {}
    for name, p in list(inspect.signature(fn).parameters.items())[leading:]:
        if name in skip:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(f"{what or fn.__name__}: parameter '{name}' needs a default (a config field), and "
                            "*args / **kwargs cannot be config fields: spell every parameter out")
        out[name] = p.default
    return out


def register_method(name: str, family: str = "gradient") -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` under ``name`` (= ``conf/method/<name>.yaml``) and ``family``; its parameters and
    defaults are the signature's, declared nowhere else.

    name: the config name, ``METHODS`` key and ``method=`` value.
    family: the catalogue's group of the method (``gradient``, ``lrp``, ``cam``, ...).

    Example:
        >>> from evalxai.methods.gradient import gradient
        >>> @register_method("doubled_gradient")
        ... def doubled_gradient(model, x, target, factor: float = 2.0):
        ...     return factor * gradient(model, x, target)
        >>> METHODS["doubled_gradient"].defaults
        {'factor': 2.0}
    """
    def wrap(fn: Callable) -> Callable:
        METHODS[name] = MethodSpec(name, fn, signature_defaults(fn, 3, what=f"method '{name}'"), family)
        return fn
    return wrap


def get_method(name: str) -> MethodSpec:
    """The registered method ``name`` (its function, defaults and family); an unknown name is a KeyError."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}': choose one of {sorted(METHODS)}")
    return METHODS[name]
