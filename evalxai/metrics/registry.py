"""The metric registry: config name -> ``f(model, x, target, attributions, **params) -> rows`` with its metadata.

A metric is declared once, by its registration::

    @register_metric("sparseness", family="complexity", directions={"gini": "higher"})
    def sparseness(model, x, target, attributions): ...

- ``family``: one of ``FAMILIES`` (the catalogue's sections, the ground-truth report's groups);
- ``directions``: every measure the metric writes, with ``higher`` / ``lower`` (is better) or ``none`` (curves and
  diagnostics); a key may be a glob (``curve_*``, ``layer_residual:*``) for measures named at run time. The rows'
  ``direction`` column is filled from here, so the function never writes one;
- ``needs``: what a call receives besides the config's parameters (``NEEDS``): ``masks`` (ground truth) and ``pool``
  (images to compose with) come from the data, ``method`` means that the method being scored is passed as
  ``method`` / ``method_params`` (``evalxai.binding.bind``);
- ``inputs``: what the metric scores (``INPUTS``): ``float`` inputs (images, vectors) and / or ``tokens`` (integer
  token ids (N, T) of a text classifier, maps (N, T); ``evalxai.api.score_tokens``). A token metric that perturbs
  the text takes ``attention_mask`` (1 = token, 0 = padding: data, not a config field); one that reads the map
  alone (localisation, complexity; no ``attention_mask`` parameter) is handed each sequence's real tokens as a
  1 x L map of one channel (``accept_tokens`` declares such metrics registered elsewhere);
- ``cost``: the model passes one call makes per explained image, from its parameters (``Passes``; what
  ``evalxai.runs.estimate`` adds up before a run starts). Without one, a metric that takes no method is known to
  explain nothing and its forwards are unknown; one that takes a method is unknown in both;
- the defaults are the function's own keyword defaults (the YAML ``conf/metric/<name>.yaml`` holds them too, written
  by ``python -m evalxai.runs.configs``).
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.validate import DATA_NEEDS
from evalxai.methods.registry import signature_defaults

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "axiomatic", "randomisation")  # in this order
DIRECTIONS = ("higher", "lower", "none")
NEEDS = ("masks", "pool", "method")
INPUTS = ("float", "tokens")  # float inputs (images, vectors); integer token ids of a text classifier
TOKEN_PARAMS = ("attention_mask",)  # what a metric that perturbs token ids receives with them (never a config field)
# the parameters a need arrives in (and that are not config fields, unless listed in the config too)
NEED_PARAMS = {"masks": ("masks",), "pool": ("pool",), "method": ("method", "method_params")}
LEADING = ("model", "x", "target", "attributions")


@dataclass(frozen=True)
class Passes:
    """Model passes per explained image of one metric call: ``forwards`` = images pushed through the model outside
    explanations, ``explains`` = images explained with the metric's method (each costs what that method costs);
    None = not known. Probing passes of one image per call (output size, memory per image) are not counted."""
    forwards: float | None
    explains: float | None


def no_passes(model: nn.Module, x: torch.Tensor, params: Mapping) -> Passes:
    """The ``cost`` of a metric that reads the map alone (complexity, localisation against masks)."""
    return Passes(0, 0)


@dataclass
class MetricSpec:
    """A registered metric: its function and everything declared with it (``register_metric``). ``fn`` fills the
    rows' directions; ``rows`` is the function as written (``evalxai.score`` fills them while it builds its table)."""
    name: str
    fn: Callable
    family: str
    directions: dict[str, str]
    needs: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)
    cost: Callable[..., Passes] | None = None
    inputs: tuple[str, ...] = ("float",)
    rows: Callable | None = None

    def __post_init__(self):
        self.rows = self.rows or self.fn

    @property
    def reads_tokens(self) -> bool:
        """Whether the function takes token ids itself (with ``attention_mask``), rather than each sequence's map of
        real tokens as a 1 x L image (``accept_tokens``)."""
        return "attention_mask" in inspect.signature(self.fn).parameters

    def passes(self, model: nn.Module, x: torch.Tensor, params: Mapping) -> Passes:
        """``Passes`` of one call with ``params`` (over the defaults) on inputs shaped like ``x`` (N, ...), from the
        registered ``cost(model, x, params)``; without one: no explains unless the metric takes a method, forwards
        unknown. Parameters the call itself would refuse (a ValueError) give unknown counts."""
        if self.cost is None:
            return Passes(None, None if "method" in self.needs else 0)
        try:
            return self.cost(model, x, {**self.defaults, **params})
        except ValueError:  # e.g. a patch larger than the image: the call will say so
            return Passes(None, None)

    def direction(self, measure: str) -> str:
        """The declared direction of ``measure``: its own key, else the first glob key that matches it."""
        if measure in self.directions:
            return self.directions[measure]
        for pattern, direction in self.directions.items():
            if fnmatch.fnmatchcase(measure, pattern):
                return direction
        raise KeyError(f"metric '{self.name}' wrote measure '{measure}', which its registration does not declare: add "
                       f"it to register_metric('{self.name}', directions=...)")

    @property
    def reads_maps_only(self) -> bool:
        """Whether a call reads the maps (and masks) alone, never the model: its ``cost`` is ``no_passes`` and it
        needs no method or pool (localisation, complexity)."""
        return self.cost is no_passes and "method" not in self.needs and "pool" not in self.needs

    def directions_of(self, measure: np.ndarray | pd.Series | None, n: int) -> np.ndarray:
        """The declared direction of each of ``n`` rows' measures (``measure`` None: the metric's name)."""
        if measure is None:
            return np.full(n, self.direction(self.name), dtype=object)
        codes, measures = pd.factorize(measure)
        return np.array([self.direction(m) for m in measures], dtype=object)[codes]

    def with_directions(self, rows: pd.DataFrame | Mapping | list) -> pd.DataFrame:
        """``rows`` with the ``direction`` column of their measures (``direction_position``)."""
        rows = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        direction = self.directions_of(rows["measure"] if "measure" in rows else None, len(rows))
        at = direction_position(list(rows.columns))
        if at is None:
            rows["direction"] = direction
        else:
            rows.insert(at, "direction", direction)
        return rows


def direction_position(columns: list[str]) -> int | None:
    """Where the ``direction`` column goes among a metric's row ``columns``: None where it is one of them (the row
    builders leave it empty: filled in place), else right after ``value`` (last where there is none)."""
    if "direction" in columns:
        return None
    return columns.index("value") + 1 if "value" in columns else len(columns)


METRICS: dict[str, MetricSpec] = {}


def _check(name: str, fn: Callable, family: str, directions: Mapping, needs: tuple, inputs: tuple) -> None:
    if family not in FAMILIES:
        raise ValueError(f"metric '{name}': family '{family}' is not one of {list(FAMILIES)}")
    wrong = {m: d for m, d in directions.items() if d not in DIRECTIONS}
    if not directions or wrong:
        raise ValueError(f"metric '{name}': directions must map every measure to one of {list(DIRECTIONS)}, got "
                         f"{dict(directions)}")
    params = inspect.signature(fn).parameters
    if list(params)[:len(LEADING)] != list(LEADING):
        raise TypeError(f"metric '{name}' must take ({', '.join(LEADING)}, ...) first, got {list(params)}")
    if not inputs or set(inputs) - set(INPUTS):
        raise ValueError(f"metric '{name}': inputs {list(inputs)} must be some of {list(INPUTS)}")
    if "attention_mask" in params and inputs != ("tokens",):
        raise TypeError(f"metric '{name}' takes attention_mask, so it scores token ids alone: declare "
                        f"inputs=('tokens',), not {tuple(inputs)}")
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"metric '{name}': needs {unknown} are not among {list(NEEDS)}")
    for need in NEEDS:
        taken = [p for p in NEED_PARAMS[need] if p in params]
        if (need in needs) != bool(taken) or (taken and len(taken) != len(NEED_PARAMS[need])):
            raise TypeError(f"metric '{name}': its signature takes {taken or 'none of'} {list(NEED_PARAMS[need])} "
                            f"but needs={tuple(needs)}: declare needs=(..., '{need}') exactly when it takes them")


def register_metric(name: str, *, family: str, directions: Mapping[str, str], needs: tuple[str, ...] = (),
                    cost: Callable[..., Passes] | None = None,
                    inputs: tuple[str, ...] = ("float",)) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` under ``name`` (= ``conf/metric/<name>.yaml``) with its family, the directions of
    its measures, its needs and its cost (module docstring); the defaults are the signature's. The registered
    function (also the name the module binds) is ``fn`` with the rows' ``direction`` filled from ``directions``.

    name: the config name, ``METRICS`` key and ``metric=`` value.
    family: one of ``FAMILIES``.
    directions: measure (or glob) -> ``higher`` / ``lower`` / ``none``, for every measure the rows carry.
    needs: what the call receives besides its config fields, from ``NEEDS`` (``masks``, ``pool``, ``method``).
    cost: ``cost(model, x, params) -> Passes`` per explained image, ``params`` = the defaults with the call's values.
    inputs: from ``INPUTS``: ``("float",)`` (images, vectors), ``("tokens",)`` (token ids: the function takes
        ``attention_mask``) or both (a map-only metric that also scores token maps).

    Example:
        >>> from evalxai.metrics.common import scalar_rows
        >>> @register_metric("mean_abs", family="complexity", directions={"mean_abs": "lower"})
        ... def mean_abs(model, x, target, attributions, scale: float = 1.0):
        ...     return scalar_rows(scale * attributions.flatten(1).abs().mean(1), "mean_abs")
        >>> METRICS["mean_abs"].defaults, METRICS["mean_abs"].direction("mean_abs")
        ({'scale': 1.0}, 'lower')
    """
    needs, inputs = tuple(needs), tuple(inputs)

    def wrap(fn: Callable) -> Callable:
        _check(name, fn, family, directions, needs, inputs)
        data = [p for need in DATA_NEEDS if need in needs for p in NEED_PARAMS[need]]
        data += [p for p in TOKEN_PARAMS if "tokens" in inputs and p in inspect.signature(fn).parameters]
        defaults = signature_defaults(fn, len(LEADING), skip=data, what=f"metric '{name}'")
        spec = MetricSpec(name, fn, family, dict(directions), needs, defaults, cost, inputs)

        @functools.wraps(fn)
        def metric(*args, **kwargs):
            return spec.with_directions(fn(*args, **kwargs))

        spec.fn, spec.rows = metric, fn
        METRICS[name] = spec
        return metric
    return wrap


def accept_tokens(*names: str) -> None:
    """Declare that the registered metrics ``names``, which read the map (and masks) alone, also score token maps:
    each sequence's real tokens as a map of one channel, 1 x L (``evalxai.api.score_tokens``)."""
    for name in names:
        spec = get_metric(name)
        if not spec.reads_maps_only:
            raise ValueError(f"metric '{name}' uses the model or other inputs, not the map alone: it cannot score "
                             "token maps as 1 x L maps; write a token metric taking attention_mask instead")
        spec.inputs = tuple(dict.fromkeys((*spec.inputs, "tokens")))


def get_metric(name: str) -> MetricSpec:
    """The registered metric ``name`` (``MetricSpec``); an unknown name is a KeyError."""
    if name not in METRICS:
        raise KeyError(f"unknown metric '{name}': choose one of {sorted(METRICS)}")
    return METRICS[name]


def families() -> dict[str, tuple[str, ...]]:
    """Family -> its registered metrics (by name), families in ``FAMILIES`` order, metrics in registration order."""
    return {f: tuple(n for n, s in METRICS.items() if s.family == f) for f in FAMILIES}
