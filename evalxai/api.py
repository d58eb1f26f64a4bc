"""Public API: ``explain`` (attributions by method name; token ids of text classifiers: ``explain_tokens``) and
``score`` (tidy metric rows by metric name)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.binding import bind, resolve_method
from evalxai.core.guard import frozen
from evalxai.core.memory import images_per_chunk
from evalxai.core.validate import (
    check_attributions,
    check_finite,
    check_inputs,
    check_logits,
    check_masks,
    check_metric_inputs,
    check_pool,
    check_token_attributions,
    check_token_inputs,
    check_token_masks,
)
from evalxai.metrics import get_metric
from evalxai.metrics.registry import MetricSpec, direction_position
from evalxai.metrics.tokens import why_not_tokens
from evalxai.models.text import EmbeddingsInput, mask_groups, text_model

Target = int | Sequence[int] | torch.Tensor
"""What ``explain`` and ``score`` take as ``target``: one class for every sample, or one per sample."""


def _chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Samples per call: what an LRP pass over them needs fits the memory budget (``evalxai.core.memory``); a method or
    metric with more work per sample (IG paths, perturbation stacks) chunks further inside."""
    return images_per_chunk(model, x, "lrp", None, "explaining")


def explain(model: nn.Module, x: torch.Tensor, target: Target,
            method: str | Callable | Mapping = "lrp_epsilon_plus", attention_mask: torch.Tensor | None = None,
            per_token: bool = True, **overrides: Any) -> torch.Tensor:
    """Attributions of ``target`` logits for inputs ``x``, shaped like ``x``; the model is left as it was.

    model: the classifier, inputs (N, ...) to logits (N, classes); explained in eval mode, without grads kept.
    x: the inputs (N, C, H, W) or (N, D), float, in model space (the dtype of the model's parameters). Integer x are
        token ids (N, T) of a text classifier (a Hugging Face ``*ForSequenceClassification`` model, or a module with
        ``get_input_embeddings()`` and ``forward(inputs_embeds=, attention_mask=)``): the map is the relevance of each
        token's word embedding summed over its D entries, (N, T), padding 0 (``explain_tokens``).
    attention_mask: token ids only: (N, T), 1 = token, 0 = padding (None: all tokens).
    per_token: token ids only: False gives the (N, T, D) map of the word embeddings.
    target: the class explained for each sample: one int for all, or N class indices (list or tensor).
    method: a config name (``conf/method/<name>.yaml``, ``evalxai.methods.METHODS``), a callable
        ``f(model, x, target)`` or a mapping with ``_target_`` (a captum attribution class, e.g.
        ``{"_target_": "captum.attr.Saliency"}``).
    overrides: config fields of the method (``epsilon``, ``gamma``, ``steps``, ...). ``low`` / ``high`` / ``mean``
        (box bounds, black and uniform baselines, the mean image) are model-space values: unset, they are
        ``evalxai.core.baselines.data_range``'s [0, 1] pixels; for normalised inputs pass the model-space values of
        black and white, (0 - mean) / std and (1 - mean) / std per channel, as the pipeline does.

    Example:
        >>> import torch, evalxai
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4)
        >>> evalxai.explain(model, x, target=0, method="gradient").shape
        torch.Size([2, 1, 4, 4])
        >>> evalxai.explain(model, x, target=[0, 2], method="integrated_gradients", steps=8).shape
        torch.Size([2, 1, 4, 4])
    """
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        return explain_tokens(model, x, target, method, attention_mask, per_token, **overrides)
    if attention_mask is not None:
        raise ValueError("attention_mask is for token ids (integer x): drop it for float inputs")
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


def explain_tokens(model: nn.Module, input_ids: torch.Tensor, target: Target, method: str | Callable | Mapping,
                   attention_mask: torch.Tensor | None = None, per_token: bool = True,
                   **overrides: Any) -> torch.Tensor:
    """Relevance of each token (N, T) (``per_token=False``: of each embedding entry, (N, T, D)) for the ``target``
    logits of a text classifier: ``evalxai.explain`` on integer inputs (token ids).

    The map is taken at the word embeddings e = ``model.get_input_embeddings()(input_ids)`` (N, T, D):
    ``evalxai.models.EmbeddingsInput`` makes the model a function of e, and every method explains e as it explains an
    image (LRP rules, gradients, integrated gradients from the zero or a pad / [MASK] token's embedding); occlusion
    and attention rollout have token versions (one token at a time; the classifying token's rollout row). A token's
    relevance is its embedding's relevance summed over D; padding (``attention_mask`` 0) gets 0. The samples are
    explained in groups of one attention mask (one length, when right-padded): a method that stacks perturbed copies
    of its samples runs the wrapper on any batch, and every row needs its mask. The mask is an input of the
    wrapper's traced graph (``EmbeddingsInput.masked``), so the groups of one shape share one trace: one wrapper for
    the masks with padding and one for the mask without (a model may branch on whether there is padding at all)."""
    inner = text_model(model)
    input_ids, attention_mask = check_token_inputs(inner, input_ids, attention_mask)
    embeds = EmbeddingsInput(inner).embed(input_ids)
    # the classes from one sample: its wrapper sees the first row of the mask
    _, target = check_inputs(EmbeddingsInput(inner, attention_mask[:1]), embeds, target)
    fn = resolve_method(method, overrides)
    r = torch.empty_like(embeds)
    wrappers = {False: EmbeddingsInput(inner), True: EmbeddingsInput(inner)}
    with frozen(model):
        for mask, rows in mask_groups(attention_mask):
            with wrappers[bool(mask.all())].masked(mask[None]) as wrapped:
                step = images_per_chunk(wrapped, embeds[rows], "lrp", None, "explaining")
                for i in range(0, len(rows), step):
                    idx = rows[i:i + step]
                    part = fn(wrapped, embeds[idx], target[idx])
                    if not isinstance(part, torch.Tensor) or part.shape != embeds[idx].shape:
                        raise ValueError(f"method {method!r} returned {getattr(part, 'shape', type(part))}, expected "
                                         f"a tensor of shape {tuple(embeds[idx].shape)} (the word embeddings)")
                    r[idx] = part.detach().to(r.dtype)
    check_finite(r, f"attributions of {method!r}")
    r = r * attention_mask.unsqueeze(-1).to(r.dtype)
    return r.sum(-1) if per_token else r


def row_major_order(sample: np.ndarray) -> np.ndarray | None:
    """The permutation that puts rows in the order (k-th row of each sample, sample), k counted per sample in
    table order; None when they already are."""
    n = int(sample.max()) + 1 if len(sample) else 0
    if n and len(sample) % n == 0 and np.array_equal(sample, np.tile(np.arange(n), len(sample) // n)):
        return None  # the usual case, each row of samples 0..n-1 in turn: checked without sorting
    by_sample = np.argsort(sample, kind="stable")
    s = sample[by_sample]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    k = np.empty(len(sample), dtype=np.int64)
    k[by_sample] = np.arange(len(sample)) - np.repeat(starts, np.diff(np.r_[starts, len(sample)]))
    order = np.lexsort((sample, k))
    return None if np.array_equal(order, np.arange(len(sample))) else order


def score(model: nn.Module, x: torch.Tensor, target: Target, attributions: torch.Tensor,
          metric: str = "pixel_flipping", masks: torch.Tensor | None = None,
          pool: tuple[torch.Tensor, torch.Tensor] | None = None, attention_mask: torch.Tensor | None = None,
          **overrides: Any) -> pd.DataFrame:
    """Tidy rows (metric, sample, measure, value, direction, step, ...) of ``metric`` for the attributions.

    model, x, target: as in ``explain`` (the attributions' model, inputs and explained classes). Integer x are token
        ids (N, T) of a text classifier, scored by ``score_tokens`` (maps (N, T), masks (N, T)).
    attributions: the maps to score, shaped like ``x`` (e.g. from ``explain``).
    attention_mask: token ids only: (N, T), 1 = token, 0 = padding (None: all tokens).
    metric: a metric name (``conf/metric/<name>.yaml``, ``evalxai.metrics.METRICS``).
    masks: (N, H, W) bool, True = relevant pixel: the ground truth of localisation metrics (those that need
        ``masks``: ``evalxai.metrics.METRICS[name].needs``), chunked with the samples.
    pool: (images, labels) the metric may compose with (``focus`` builds mosaics of them), the same for every
        chunk. Giving ``masks`` or ``pool`` to a metric that does not need it is an error, as is leaving out one
        a metric needs.
    overrides: config fields of the metric (``patch_size``, ``steps``, ``method``, ...); ``low`` / ``high`` /
        ``mean`` as in ``explain``. What the call receives is decided by ``evalxai.binding.bind``.

    Example:
        >>> import torch, evalxai
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4)
        >>> r = evalxai.explain(model, x, target=0, method="gradient")
        >>> rows = evalxai.score(model, x, 0, r, metric="sparseness")
        >>> rows[["sample", "metric", "measure"]].values.tolist()
        [[0, 'sparseness', 'gini'], [1, 'sparseness', 'gini']]
    """
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        return score_tokens(model, x, target, attributions, metric, attention_mask, masks, pool, **overrides)
    if attention_mask is not None:
        raise ValueError("attention_mask is for token ids (integer x): drop it for float inputs")
    x, target = check_inputs(model, x, target)
    check_attributions(attributions, x)
    spec = get_metric(metric)
    check_metric_inputs(spec, tokens=False)
    params = {**spec.defaults, **bind(spec, {**overrides, "masks": masks, "pool": pool})}
    if "masks" in spec.needs:
        masks = check_masks(params.pop("masks"), x, metric)
    if "pool" in spec.needs:
        params["pool"] = check_pool(params["pool"], x, metric)
    attributions = attributions.to(x.dtype)
    maps_only = spec.reads_maps_only  # reads the maps (and masks) alone: no model pass, so no logits or memory probe
    if not maps_only:
        check_logits(model, x)
    with contextlib.nullcontext() if maps_only else frozen(model):
        step = len(x) if maps_only else _chunk(model, x)
        frames = []
        for i in range(0, len(x), step):
            chunk = params if masks is None else {**params, "masks": masks[i:i + step]}
            part = _frame(spec.rows(model, x[i:i + step], target[i:i + step], attributions[i:i + step], **chunk))
            if i:
                part["sample"] = part["sample"] + i
            frames.append(part)
    return _tidy(frames, spec)


def score_tokens(model: nn.Module, input_ids: torch.Tensor, target: Target, attributions: torch.Tensor,
                 metric: str = "token_flipping", attention_mask: torch.Tensor | None = None,
                 masks: torch.Tensor | None = None, pool: tuple[torch.Tensor, torch.Tensor] | None = None,
                 **overrides: Any) -> pd.DataFrame:
    """Tidy rows of ``metric`` for token maps of a text classifier: ``evalxai.score`` on integer inputs.

    input_ids: (N, T) token ids; attention_mask: (N, T), 1 = token, 0 = padding (None: all tokens);
    attributions: (N, T), one value per token (e.g. ``evalxai.explain(model, input_ids, target, method,
    attention_mask=...)``), or (N, T, D) (summed over D); masks: (N, T) bool, True = a token of the ground-truth
    rationale (for the metrics that need ``masks``). The model: as ``explain_tokens`` takes it.

    Padding is never a feature. A token metric (``token_flipping``, ``comprehensiveness``, ``eraser_sufficiency``:
    ``MetricSpec.reads_tokens``) gets the ids, maps and attention mask; a metric that reads the map (and masks)
    alone gets each sequence's real tokens as a 1 x L map of one channel, the sequences grouped by attention mask;
    a metric without a meaning for token ids is refused with the reason (``evalxai.metrics.tokens``)."""
    spec = get_metric(metric)
    check_metric_inputs(spec, True, why_not_tokens(spec.name, spec.family))
    inner = text_model(model)
    input_ids, attention_mask = check_token_inputs(inner, input_ids, attention_mask)
    attributions = check_token_attributions(attributions, input_ids)
    embeds = EmbeddingsInput(inner).embed(input_ids)
    _, target = check_inputs(EmbeddingsInput(inner, attention_mask[:1]), embeds, target)
    params = {**spec.defaults, **bind(spec, {**overrides, "masks": masks, "pool": pool})}
    if "masks" in spec.needs:
        params["masks"] = check_token_masks(params["masks"], input_ids, metric)
    attributions = attributions.to(embeds.dtype)
    if spec.reads_tokens:
        with frozen(model):
            return _tidy([_frame(spec.rows(model, input_ids, target, attributions, attention_mask=attention_mask,
                                           **params))], spec)
    frames = []  # a metric of the maps alone (accept_tokens): never runs the model
    for mask, rows in mask_groups(attention_mask):
        keep = mask.bool()
        maps = attributions[rows][:, keep][:, None, None, :]  # (n, 1, 1, L): one channel, one row
        given = {**params, "masks": params["masks"][rows][:, keep][:, None, :]} if "masks" in params else params
        part = _frame(spec.rows(model, torch.zeros_like(maps), target[rows], maps, **given))
        part["sample"] = rows.cpu().numpy()[part["sample"].to_numpy()]
        frames.append(part)
    return _tidy(frames, spec)


def _frame(rows: pd.DataFrame | Mapping | list) -> pd.DataFrame:
    """A metric function's rows as a frame (it may return a frame, a mapping of columns or a list of records)."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)


def _tidy(frames: list[pd.DataFrame], spec: MetricSpec) -> pd.DataFrame:
    """One table of the metric's row frames (each with batch-wide ``sample`` numbers), in the order the metric writes
    them for one batch, with the ``metric``, ``direction`` (declared per measure: ``MetricSpec.directions_of``),
    ``step`` and ``measure`` columns; built in one construction (a metric without model passes costs little else)."""
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    # rows in the order the metric writes them for one batch (row k of every sample, then row k + 1), whatever
    # the chunks: the table does not depend on the memory budget
    order = row_major_order(df["sample"].to_numpy())
    if order is not None:
        df = df.take(order)
    n = len(df)
    columns = {"metric": np.full(n, spec.name, dtype=object), **{c: df[c].array for c in df.columns}}
    direction = spec.directions_of(columns["measure"] if "measure" in columns else None, n)
    at = direction_position(list(columns))
    if at is None:
        columns["direction"] = direction
    else:
        items = list(columns.items())
        columns = {**dict(items[:at]), "direction": direction, **dict(items[at:])}
    columns["step"] = pd.array(columns["step"], dtype="Int64") if "step" in columns else pd.arrays.IntegerArray(
        np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))  # all missing
    columns.setdefault("measure", np.full(n, spec.name, dtype=object))
    columns["sample"] = np.asarray(columns["sample"], dtype=np.int64)
    return pd.DataFrame(columns)
