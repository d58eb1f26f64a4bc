"""What a call of a registered method or metric receives, decided in one place: ``bind``.

The pipeline (``pipeline.method_calls`` / ``metric_call``), the meta-evaluation, ``evalxai.explain`` /
``evalxai.score`` and the metrics that re-explain (``resolve_method``) all go through it. A call receives

- the parameters its config or caller gives, checked against the registered defaults (an unknown one is an error);
- for every parameter it takes that those leave unset (absent or None): the dataset's ``low``, ``high`` and
  ``mean`` (``data``; for token ids the dataset's ``token_ids``: ``pad_id``, ``mask_id``, ``unk_id``), and for a
  metric that needs ``method`` the method being scored with its parameters (``scored``);
- for a metric that needs ``masks`` or ``pool`` (``MetricSpec.needs``): the caller's, else the run's (``ground``);
  missing ones, and ones given to a metric that does not need them, are errors (``evalxai.core.validate``).
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from evalxai.core.validate import DATA_NEEDS, check_needs, check_params
from evalxai.methods import get_method
from evalxai.methods.foreign import foreign_method

if TYPE_CHECKING:
    from evalxai.methods.registry import MethodSpec
    from evalxai.metrics.registry import MetricSpec


def unset_filled(params: Mapping, takes: Collection[str], values: Mapping) -> dict:
    """``params`` with ``values[k]`` for every key k in ``takes`` that ``params`` leaves unset: absent or None (a
    YAML null, an override to null); a value the config sets is kept."""
    return {**params, **{k: v for k, v in values.items() if k in takes and params.get(k) is None}}


def bind(spec: MethodSpec | MetricSpec, params: Mapping, *, data: Mapping | None = None,
         scored: tuple[str | Callable | Mapping, dict | None] | None = None, ground: Mapping | None = None) -> dict:
    """The parameters one call of ``spec`` (a ``MethodSpec`` or ``MetricSpec``) receives besides (model, x, target[,
    attributions]): ``params`` (config fields or overrides; for a metric also ``masks`` / ``pool`` given by the
    caller) with what the module docstring lists filled in. ``scored`` = (method, method_params) of the method whose
    maps a metric scores. The registered defaults are not merged in: the caller does (so cache keys and configs keep
    only what was set).

    spec: the registered method or metric (``evalxai.methods.get_method`` / ``evalxai.metrics.get_metric``).
    params: what the config or caller sets (unknown keys are errors).
    data: the dataset's ``low`` / ``high`` / ``mean`` (model space), filled where the call takes them and is unset.
    scored: (method, method_params) of the method whose maps a metric scores, for metrics that need ``method``.
    ground: the run's ``masks`` / ``pool``, for metrics that need them and were not given them.

    Example:
        >>> from evalxai.metrics import get_metric
        >>> bind(get_metric("max_sensitivity"), {"samples": 5}, scored=("gradient", {}))
        {'samples': 5, 'method': 'gradient', 'method_params': {}}
    """
    needs = getattr(spec, "needs", ())  # methods need nothing besides their parameters
    what = f"{'metric' if hasattr(spec, 'needs') else 'method'} '{spec.name}'"
    config = {k: v for k, v in params.items() if k not in DATA_NEEDS}
    check_params(spec.defaults, config, what)
    fills = dict(data or {})
    if "method" in needs and scored is not None and config.get("method") is None:
        fills.update(method=scored[0], method_params=scored[1])
    out = unset_filled(config, spec.defaults, fills)
    if not hasattr(spec, "needs"):
        return out
    run = {k: v for k, v in (ground or {}).items() if k in needs}
    given = {k: params.get(k) if params.get(k) is not None else run.get(k) for k in DATA_NEEDS}
    check_needs(spec, given)
    return {**out, **{k: v for k, v in given.items() if v is not None}}


def resolve_method(method: str | Callable | Mapping, overrides: Mapping) -> Callable:
    """``f(model, x, target) -> Tensor`` for a method name (with overrides), a foreign callable, or a config
    mapping with ``_target_`` (a captum attribution class or a function; see ``evalxai.methods.foreign``)."""
    if isinstance(method, Mapping) or hasattr(method, "keys"):
        spec = {**dict(method), **overrides}
        if "_target_" not in spec:
            raise ValueError(f"method config {dict(method)} has no _target_: give a method name or a _target_")
        return foreign_method(spec)
    if callable(method):
        return (lambda m, x, t: method(m, x, t, **overrides)) if overrides else method
    spec = get_method(method)
    params = {**spec.defaults, **bind(spec, overrides)}
    return lambda m, x, t: spec.fn(m, x, t, **params)
