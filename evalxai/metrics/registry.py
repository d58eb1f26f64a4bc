"""The metric registry: config name -> ``f(model, x, target, attributions, **params) -> rows`` and defaults."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class MetricSpec:
    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, **defaults):
    """Decorator: register ``fn`` under ``name`` (= ``conf/metric/<name>.yaml``) with default parameters."""
    def wrap(fn):
        METRICS[name] = MetricSpec(name, fn, defaults)
        return fn
    return wrap


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise KeyError(f"unknown metric '{name}': choose one of {sorted(METRICS)}")
    return METRICS[name]
