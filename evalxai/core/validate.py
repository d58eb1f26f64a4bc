"""Every check of what a method or metric call is given, in one place; each error is one line naming the value and
the fix. Used by ``evalxai.explain`` / ``evalxai.score`` (``evalxai.api``), the binding of configs and data to calls
(``evalxai.binding``, ``evalxai.runs.pipeline``) and the metrics that validate their own inputs (masks, pool, method).

What a metric needs besides x is declared by its registration (``MetricSpec.needs``): the data ``masks`` and
``pool`` (``DATA_NEEDS``, never config fields) and the ``method`` being scored.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from evalxai.core.guard import frozen, tensor_state
from evalxai.core.scoring import num_classes, require_images

if TYPE_CHECKING:
    from evalxai.metrics.registry import MetricSpec

DATA_NEEDS = ("masks", "pool")  # what a metric may need from the data besides x: never a config field
_FINITE_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bad_samples(t: torch.Tensor) -> list[int]:
    """The samples (rows of dim 0) holding NaN or inf. A NaN or inf anywhere makes the float64 sum NaN or inf, and a
    sum of finite float32 values cannot overflow float64, so a finite sum answers at once (torch.isfinite over every
    element costs ~20x a sum on the CPU); only a non-finite sum looks at the elements."""
    if bool(torch.isfinite(t.sum(dtype=torch.float64))):
        return []
    return torch.nonzero(~torch.isfinite(t.reshape(len(t), -1)).all(1)).flatten().tolist()


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise naming the samples whose ``what`` holds NaN or inf."""
    bad = _bad_samples(t)
    if bad:
        raise ValueError(f"{what} hold NaN or inf for samples {bad[:20]}{' ...' if len(bad) > 20 else ''}: "
                         "clean the inputs or check the model and method parameters")


def check_inputs(model: nn.Module, x: torch.Tensor,
                 target: int | Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def check_token_inputs(model: nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a text classifier's inputs (``model``: the Hugging Face model, ``LogitsOnly`` unwrapped): a
    ``get_input_embeddings()``, ``input_ids`` (N, T) integer ids within the vocabulary, an ``attention_mask`` (N, T)
    of 0 / 1 with a token in every row (None: all 1). Returns (input_ids, attention_mask as int64); the targets are
    checked by ``check_inputs`` on the word embeddings."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(model, "get_input_embeddings", None)):
        raise TypeError(f"integer inputs are token ids, and {type(model).__name__} has no get_input_embeddings(): "
                        "give a Hugging Face *ForSequenceClassification model (or a module with get_input_embeddings "
                        "and forward(inputs_embeds=, attention_mask=)), or float inputs")
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be an int tensor of shape (N, T), got {tuple(input_ids.shape)}: batch "
                         "one sequence as input_ids[None]")
    vocab = model.get_input_embeddings().weight.shape[0]
    bad = torch.nonzero(((input_ids < 0) | (input_ids >= vocab)).any(1)).flatten().tolist()
    if bad:
        raise ValueError(f"input_ids of samples {bad[:20]} are outside [0, {vocab - 1}]: tokenize with the model's "
                         "own tokenizer")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape or \
            not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError(f"attention_mask must be a 0/1 tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(getattr(attention_mask, 'shape', ()))}: pass the tokenizer's attention_mask")
    empty = torch.nonzero((attention_mask == 0).all(1)).flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask of samples {empty[:20]} has no token (all 0): drop those samples")
    return input_ids, attention_mask.to(input_ids.device).long()


def check_token_attributions(attributions: object, input_ids: torch.Tensor) -> torch.Tensor:
    """Token maps to score: a finite float tensor (N, T) shaped like ``input_ids``, or (N, T, D) (summed over D)."""
    shape = tuple(getattr(attributions, "shape", ()))
    if not isinstance(attributions, torch.Tensor) or not attributions.is_floating_point() or \
            shape[:2] != tuple(input_ids.shape) or len(shape) not in (2, 3):
        raise ValueError(f"attributions of token ids must be a float tensor (N, T) = {tuple(input_ids.shape)} (one "
                         f"value per token) or (N, T, D), got {shape}: explain with evalxai.explain(model, input_ids, "
                         "...)")
    check_finite(attributions, "attributions")
    return attributions.sum(-1) if attributions.dim() == 3 else attributions


def check_token_masks(masks: object, input_ids: torch.Tensor, metric: str) -> torch.Tensor:
    """Rationale masks of token ids: a bool tensor (N, T), True = a token of the ground-truth rationale."""
    if masks is None:
        raise ValueError(MISSING["masks"].format(metric=metric))
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != tuple(input_ids.shape) or masks.dtype != torch.bool:
        raise ValueError(f"metric '{metric}': masks of token ids must be a bool tensor (N, T) = "
                         f"{tuple(input_ids.shape)}, True = a rationale token, got {getattr(masks, 'dtype', '')} "
                         f"{tuple(getattr(masks, 'shape', ()))}")
    return masks.to(input_ids.device)


def check_metric_inputs(spec: MetricSpec, tokens: bool, why_not: str = "") -> None:
    """Raise unless the metric scores the kind of input given: token ids (``tokens``) or float inputs
    (``MetricSpec.inputs``); ``why_not`` is the reason a metric refuses token ids."""
    if tokens and "tokens" not in spec.inputs:
        raise ValueError(why_not or f"metric '{spec.name}' does not score token ids: use a token metric")
    if not tokens and "float" not in spec.inputs:
        raise ValueError(f"metric '{spec.name}' takes token ids (integer input_ids (N, T) of a text classifier, maps "
                         "(N, T), attention_mask), not float inputs: score token maps, or choose a metric for images")


def check_attributions(attributions: object, x: torch.Tensor) -> None:
    """Attributions to score: a finite tensor shaped like x."""
    if not isinstance(attributions, torch.Tensor) or attributions.shape != x.shape:
        raise ValueError(f"attributions must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(getattr(attributions, 'shape', ()))}")
    check_finite(attributions, "attributions")


def check_logits(model: nn.Module, x: torch.Tensor) -> None:
    """Raise naming the samples whose logits are NaN or inf: metrics compare scores, and a NaN logit would poison
    every curve. The answer is remembered for this very ``x`` (same object, unmodified) and unchanged parameters
    and buffers, so scoring one batch with several metrics makes this forward once."""
    state = (x._version, tensor_state(model))
    seen = _FINITE_LOGITS.get(model)
    if seen is not None and seen[0]() is x and seen[1] == state:
        return
    with frozen(model, warn_train=False), torch.no_grad():
        check_finite(model(x), "logits")
    _FINITE_LOGITS[model] = (weakref.ref(x), state)


def check_params(defaults: dict, overrides: dict, what: str) -> dict:
    """``defaults`` updated by ``overrides``, or an error naming the parameters ``what`` does not have."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"{what} has no parameter {sorted(unknown)}: it takes {sorted(defaults)}")
    return {**defaults, **overrides}


def check_config(spec: MetricSpec, params: dict) -> None:
    """A config's parameters of a metric: no data (masks, pool: they come from the dataset), none it does not take."""
    given = sorted(k for k in DATA_NEEDS if params.get(k) is not None)
    if given:
        raise ValueError(f"metric '{spec.name}': {given} come from the dataset, not the config: drop them from "
                         f"metrics.{spec.name}")
    check_params(spec.defaults, {k: v for k, v in params.items() if k not in DATA_NEEDS}, f"metric '{spec.name}'")


def check_needs(spec: MetricSpec, given: dict) -> None:
    """Raise unless ``given`` holds (not None) exactly the data the metric needs: masks, pool (``spec.needs``)."""
    metric = spec.name
    for need in DATA_NEEDS:
        if need in spec.needs and given.get(need) is None:
            raise ValueError(MISSING[need].format(metric=metric))
        if need not in spec.needs and given.get(need) is not None:
            raise ValueError(NOT_TAKEN[need].format(metric=metric))


MISSING = {
    "masks": "metric '{metric}' needs ground-truth masks: pass masks=<bool tensor (N, H, W)> to evalxai.score, or run "
             "on a dataset with masks (xai_tris, decoy_mnist, image_folder with masks=DIR)",
    "pool": "metric '{metric}' needs a pool of images: pass pool=(images, labels) to evalxai.score, images in the "
            "model's input space with int labels (the pipeline draws them from the dataset's train split)",
}
NOT_TAKEN = {
    "masks": "metric '{metric}' takes no masks (it does not use ground truth): drop masks=, or choose a localisation "
             "metric",
    "pool": "metric '{metric}' takes no pool of images: drop pool=",
}


def require_method(method: object, metric: str) -> None:
    """A metric that re-explains needs the method to call."""
    if method is None:
        raise ValueError(f"metric '{metric}' re-explains perturbed inputs: give method=<name or callable> "
                         "(the pipeline passes the method being scored)")


def check_masks(masks: object, x: torch.Tensor, metric: str, numbers: bool = False) -> torch.Tensor:
    """Ground-truth masks as a bool tensor (N, H, W) on x's device, or an error saying how to fix them.

    ``evalxai.score`` asks for bool masks; a metric function called directly also takes numbers (``numbers``, as
    Quantus's ``s_batch``): integers count where nonzero, floats must be 0 or 1."""
    if masks is None:
        raise ValueError(MISSING["masks"].format(metric=metric))
    require_images(x, f"metric '{metric}'")
    want = (len(x), *x.shape[2:])
    if not isinstance(masks, torch.Tensor):
        try:
            masks = torch.from_numpy(np.asarray(masks))
        except (TypeError, ValueError):
            raise TypeError(f"metric '{metric}': masks must be a bool tensor of shape {want}, got "
                            f"{type(masks).__name__}") from None
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != want:
        raise ValueError(f"metric '{metric}': masks have shape {tuple(masks.shape)}; expected (N, H, W) = {want}, one "
                         "mask per sample of x with the image's height and width")
    if masks.dtype != torch.bool:
        if not numbers:
            raise ValueError(f"metric '{metric}': masks are {masks.dtype}; they must be bool (True = relevant pixel): "
                             "pass masks != 0 (or masks > threshold)")
        if masks.is_floating_point() and not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"metric '{metric}': masks hold values other than 0 and 1: binarise them (e.g. masks > "
                             "0.5)")
        masks = masks != 0
    return masks.to(x.device)


def check_pool(pool: object, x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool of images ``(images (M, *x.shape[1:]), labels (M,) int)``, on x's device and dtype, or an error."""
    if pool is None:
        raise ValueError(MISSING["pool"].format(metric=metric))
    ok = isinstance(pool, (tuple, list)) and len(pool) == 2 and all(isinstance(t, torch.Tensor) for t in pool)
    if ok:
        images, labels = pool
        ok = (images.shape[1:] == x.shape[1:] and labels.shape == (len(images),) and len(images) > 0
              and not labels.is_floating_point())
    if not ok:
        raise ValueError(f"metric '{metric}': pool must be a pair (images (M, {', '.join(map(str, x.shape[1:]))}), "
                         "labels (M,) int) of images in the model's input space, e.g. a sample of the train split")
    return images.to(device=x.device, dtype=x.dtype), labels.long().to(x.device)
