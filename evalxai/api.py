"""Public API: ``explain`` (attributions by method name) and ``score`` (tidy metric rows by metric name)."""
from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.methods import get_method
from evalxai.methods.guard import frozen

_NUM_CLASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FINITE_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bad_samples(t: torch.Tensor) -> list[int]:
    return torch.nonzero(~torch.isfinite(t.reshape(len(t), -1)).all(1)).flatten().tolist()


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise naming the samples whose ``what`` holds NaN or inf."""
    bad = _bad_samples(t)
    if bad:
        raise ValueError(f"{what} hold NaN or inf for samples {bad[:20]}{' ...' if len(bad) > 20 else ''}: "
                         "clean the inputs or check the model and method parameters")


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of model outputs (one forward on one sample, cached per model)."""
    n = _NUM_CLASSES.get(model)
    if n is None:
        with frozen(model, warn_train=False), torch.no_grad():
            out = model(x[:1])
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError("the model must return a logits tensor of shape (N, classes)")
        n = out.shape[1]
        _NUM_CLASSES[model] = n
    return n


def check_inputs(model: nn.Module, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (x, target): shapes, dtypes, finiteness, target range; returns target as int64 (N,)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError("x must be a non-empty float tensor of shape (N, C, H, W) or (N, D)")
    p = next(model.parameters(), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(f"x is {x.dtype} but the model is {p.dtype}: convert one of them (x.to({p.dtype}))")
    check_finite(x, "inputs")
    target = torch.as_tensor(target)
    if target.dim() == 0:
        target = target.expand(len(x))
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or target.shape != (len(x),):
        raise ValueError(f"target must be an int tensor of shape ({len(x)},), got {target.dtype} {tuple(target.shape)}")
    c = num_classes(model, x)
    out_of_range = torch.nonzero((target < 0) | (target >= c)).flatten().tolist()
    if out_of_range:
        raise ValueError(f"targets of samples {out_of_range[:20]} are outside [0, {c - 1}]: the model has {c} outputs")
    return x, target.long().to(x.device)


def check_logits(model: nn.Module, x: torch.Tensor) -> None:
    """Raise naming the samples whose logits are NaN or inf: metrics compare scores, and a NaN logit would poison
    every curve. The answer is remembered for this very ``x`` (same object, unmodified) and unchanged parameters
    and buffers, so scoring one batch with several metrics makes this forward once."""
    state = (x._version, tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers())))
    seen = _FINITE_LOGITS.get(model)
    if seen is not None and seen[0]() is x and seen[1] == state:
        return
    with frozen(model, warn_train=False), torch.no_grad():
        check_finite(model(x), "logits")
    _FINITE_LOGITS[model] = (weakref.ref(x), state)


def _params(defaults: dict, overrides: dict, what: str) -> dict:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"{what} has no parameter {sorted(unknown)}: it takes {sorted(defaults)}")
    return {**defaults, **overrides}


def resolve_method(method: str | Callable | dict, overrides: dict) -> Callable:
    """``f(model, x, target) -> Tensor`` for a method name (with overrides), a foreign callable, or a config
    mapping with ``_target_`` (a captum attribution class or a function; see ``evalxai.methods.foreign``)."""
    if isinstance(method, dict) or hasattr(method, "keys"):
        from evalxai.methods.foreign import foreign_method

        spec = {**dict(method), **overrides}
        if "_target_" not in spec:
            raise ValueError(f"method config {dict(method)} has no _target_: give a method name or a _target_")
        return foreign_method(spec)
    if callable(method):
        return (lambda m, x, t: method(m, x, t, **overrides)) if overrides else method
    spec = get_method(method)
    params = _params(spec.defaults, overrides, f"method '{method}'")
    return lambda m, x, t: spec.fn(m, x, t, **params)


def _chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Samples per call: what an LRP pass over them needs fits the memory budget (``evalxai.memory``); a method or
    metric with more work per sample (IG paths, perturbation stacks) chunks further inside."""
    from evalxai.memory import images_per_chunk

    return images_per_chunk(model, x, "lrp", None, "explaining")


def explain(model: nn.Module, x: torch.Tensor, target, method: str | Callable | dict = "lrp_epsilon_plus",
            **overrides) -> torch.Tensor:
    """Attributions of ``target`` logits for inputs ``x``, shaped like ``x``.

    ``method`` is a config name (``conf/method/<name>.yaml``), a callable ``f(model, x, target)`` or a mapping
    with ``_target_`` (a captum attribution class, e.g. ``{"_target_": "captum.attr.Saliency"}``);
    ``overrides`` are config fields (``epsilon``, ``gamma``, ``steps``, ...). The model is left as it was.
    ``low`` / ``high`` / ``mean`` (box bounds, black and uniform baselines, the mean image) are model-space values:
    unset, they are ``evalxai.baselines.data_range``'s [0, 1] pixels; for normalised inputs pass the model-space
    values of black and white, (0 - mean) / std and (1 - mean) / std per channel, as the pipeline does.
    """
    x, target = check_inputs(model, x, target)
    fn = resolve_method(method, overrides)
    with frozen(model):
        step = _chunk(model, x)
        parts = [fn(model, x[i:i + step], target[i:i + step]) for i in range(0, len(x), step)]
        attributions = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not isinstance(attributions, torch.Tensor) or attributions.shape != x.shape:
        raise ValueError(f"method {method!r} returned {getattr(attributions, 'shape', type(attributions))}, "
                         f"expected a tensor of shape {tuple(x.shape)}")
    check_finite(attributions, f"attributions of {method!r}")
    return attributions.detach()


GROUND_TRUTH = ("masks", "pool")  # what a metric asks for by naming it in its signature; data, not config


def takes(spec, name: str) -> bool:
    """Whether a metric's function has a parameter ``name`` (``masks``, ``pool``): the data it needs besides x."""
    return name in inspect.signature(spec.fn).parameters


def check_masks(masks, x: torch.Tensor, metric: str) -> torch.Tensor:
    """Ground-truth masks as a bool tensor (N, H, W) on x's device, or an error saying how to fix them."""
    want = (len(x), *x.shape[2:])
    if x.dim() != 4:
        raise ValueError(f"metric '{metric}': masks need images (N, C, H, W), but x is {tuple(x.shape)}")
    if not isinstance(masks, torch.Tensor):
        try:
            masks = torch.from_numpy(np.asarray(masks))
        except (TypeError, ValueError):
            raise TypeError(f"metric '{metric}': masks must be a bool tensor of shape {want}, got "
                            f"{type(masks).__name__}") from None
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dtype != torch.bool:
        raise ValueError(f"metric '{metric}': masks are {masks.dtype}; they must be bool (True = relevant pixel): "
                         "pass masks != 0 (or masks > threshold)")
    if tuple(masks.shape) != want:
        raise ValueError(f"metric '{metric}': masks have shape {tuple(masks.shape)}; expected (N, H, W) = {want}, one "
                         "mask per sample of x with the image's height and width")
    return masks.to(x.device)


def check_pool(pool, x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool of images ``(images (M, *x.shape[1:]), labels (M,) int)`` in model space, or an error."""
    ok = isinstance(pool, (tuple, list)) and len(pool) == 2 and all(isinstance(t, torch.Tensor) for t in pool)
    if ok:
        images, labels = pool
        ok = (images.shape[1:] == x.shape[1:] and labels.shape == (len(images),) and len(images) > 0
              and not labels.is_floating_point())
    if not ok:
        raise ValueError(f"metric '{metric}': pool must be a pair (images (M, {', '.join(map(str, x.shape[1:]))}), "
                         "labels (M,) int) of images in the model's input space, e.g. a sample of the train split")
    return images.to(device=x.device, dtype=x.dtype), labels.long().to(x.device)


def row_major_order(sample: np.ndarray) -> np.ndarray | None:
    """The permutation that puts rows in the order (k-th row of each sample, sample), k counted per sample in
    table order; None when they already are."""
    by_sample = np.argsort(sample, kind="stable")
    s = sample[by_sample]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    k = np.empty(len(sample), dtype=np.int64)
    k[by_sample] = np.arange(len(sample)) - np.repeat(starts, np.diff(np.r_[starts, len(sample)]))
    order = np.lexsort((sample, k))
    return None if np.array_equal(order, np.arange(len(sample))) else order


def score(model: nn.Module, x: torch.Tensor, target, attributions: torch.Tensor, metric: str = "pixel_flipping",
          masks=None, pool=None, **overrides) -> pd.DataFrame:
    """Tidy rows (sample, metric, measure, step, value, direction, ...) of ``metric`` for the attributions.

    ``masks`` (N, H, W) bool, True = relevant pixel: the ground truth of localisation metrics (those whose function
    takes ``masks``), chunked with the samples. ``pool`` = (images, labels): images the metric may compose with
    (``focus`` builds mosaics of them), the same for every chunk. Giving either to a metric that does not take it
    is an error, as is leaving out one a metric needs. ``low`` / ``high`` / ``mean``: as in ``explain`` (the data
    range and the mean image in model space; unset, ``evalxai.baselines.data_range``'s [0, 1]).
    """
    from evalxai.metrics import get_metric

    x, target = check_inputs(model, x, target)
    if not isinstance(attributions, torch.Tensor) or attributions.shape != x.shape:
        raise ValueError(f"attributions must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(getattr(attributions, 'shape', ()))}")
    check_finite(attributions, "attributions")
    spec = get_metric(metric)
    defaults = {k: v for k, v in spec.defaults.items() if k not in GROUND_TRUTH}
    params = _params(defaults, overrides, f"metric '{metric}'")
    extra = {}
    if takes(spec, "masks"):
        if masks is None:
            raise ValueError(f"metric '{metric}' needs masks: use a dataset with masks (xai_tris, decoy_mnist, "
                             "image_folder with masks=DIR) or pass masks= to evalxai.score")
        masks = check_masks(masks, x, metric)
    elif masks is not None:
        raise ValueError(f"metric '{metric}' takes no masks (it does not use ground truth): drop masks=, or choose a "
                         "localisation metric")
    if takes(spec, "pool"):
        if pool is None:
            raise ValueError(f"metric '{metric}' needs a pool of images: pass pool=(images, labels) to "
                             "evalxai.score (the pipeline draws it from the dataset's train split)")
        extra["pool"] = check_pool(pool, x, metric)
    elif pool is not None:
        raise ValueError(f"metric '{metric}' takes no pool of images: drop pool=")
    check_logits(model, x)
    attributions = attributions.to(x.dtype)
    with frozen(model):
        step = _chunk(model, x)
        frames = []
        for i in range(0, len(x), step):
            if masks is not None:
                extra["masks"] = masks[i:i + step]
            part = pd.DataFrame(spec.fn(model, x[i:i + step], target[i:i + step], attributions[i:i + step],
                                        **params, **extra))
            if i:
                part["sample"] = part["sample"] + i
            frames.append(part)
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    # rows in the order the metric writes them for one batch (row k of every sample, then row k + 1), whatever
    # the chunks: the table does not depend on the memory budget
    order = row_major_order(df["sample"].to_numpy())
    df = df.reset_index(drop=True) if order is None else df.take(order).reset_index(drop=True)
    df.insert(0, "metric", metric)
    for col, default in (("step", pd.NA), ("measure", metric)):
        if col not in df:
            df[col] = default
    df["step"] = df["step"].astype("Int64")
    df["sample"] = df["sample"].astype("int64")
    return df
