"""Attention-based maps of transformers: attention rollout (Abnar & Zuidema 2020), for vision transformers and, through
``evalxai.models.EmbeddingsInput``, text classifiers on token ids.

The attention weights are read from the traced model (``nn.MultiheadAttention`` modules, ``F.scaled_dot_product_
attention`` calls and hand-written ``softmax(q k^T) v``, as ``evalxai.methods.graph.attention_nodes`` recognises them
for the LRP engine too), never by hooks.
"""
from __future__ import annotations

import torch
from torch import nn

from evalxai.methods.graph import LRPError, attention_nodes, check_function, execute
from evalxai.methods.registry import register_method
from evalxai.models.text import EmbeddingsInput, last_positions

HEAD_FUSIONS = ("mean", "max", "min")
POSITIONS = ("first", "last", "mean")


def attention_weights(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every attention layer, in forward order, each (N, heads, queries, keys)."""
    graph, nodes = attention_nodes(model, x)
    if not nodes:
        raise LRPError(f"{type(model).__name__} has no attention layer that evalxai recognises "
                       "(nn.MultiheadAttention, F.scaled_dot_product_attention, softmax(q k^T) @ v): attention "
                       "rollout needs a transformer")
    maps: list[torch.Tensor] = []

    def handle(node, call, args, kwargs):
        if node not in nodes:
            return NotImplemented
        if node.op == "call_module":
            kw = {**kwargs, "need_weights": True, "average_attn_weights": False}
            out, w = call(*args, **kw)
            maps.append(w if w.dim() == 4 else w.unsqueeze(0))
            return out, (w.mean(-3) if kwargs.get("average_attn_weights", True) else w) \
                if kwargs.get("need_weights", True) else None
        if node.target is torch.nn.functional.scaled_dot_product_attention:
            maps.append(_sdpa_weights(*args, **kwargs))
            return call(*args, **kwargs)
        out = call(*args, **kwargs)
        maps.append(out if out.dim() == 4 else out.unsqueeze(1))
        return out

    with torch.no_grad():
        check_function(model, x, execute(model, graph, x, handle))
    return maps


def _sdpa_weights(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) as ``F.scaled_dot_product_attention`` computes it (without dropout)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, -1)


def _patch_grid(model: nn.Module, x: torch.Tensor, patch_size: int | None) -> int:
    if patch_size is None:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == tuple(m.stride):
                return int(m.kernel_size[0])
        raise ValueError("attention_rollout: no patch embedding (a Conv2d with stride = kernel) found; "
                         "pass patch_size=")
    return int(patch_size)


def rollout(maps: list[torch.Tensor], residual: float, head_fusion: str, discard_ratio: float,
            keys: torch.Tensor | None = None) -> torch.Tensor:
    """prod_l (r I + (1 - r) A_l) over the layers' attention weights (N, heads, T, T), rows renormalised, in
    float64 (N, T, T). ``keys`` (N, T) bool: the real tokens of text, the only columns ``discard_ratio`` counts and
    discards among (padding columns hold 0 after the model's masking)."""
    joint = None
    for a in maps:
        a = a.double()
        a = a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)
        if discard_ratio > 0 and keys is None:
            k = int(a.shape[-1] * discard_ratio)
            if k:
                low = a.topk(k, dim=-1, largest=False).indices
                a = a.scatter(-1, low, 0.0)
        elif discard_ratio > 0:  # the smallest int(L * ratio) of each row's L real columns
            cols = keys[:, None, :].expand_as(a)
            rank = a.masked_fill(~cols, float("inf")).argsort(dim=-1, stable=True).argsort(dim=-1)
            k = (keys.sum(-1) * discard_ratio).long().view(-1, 1, 1)
            a = a.masked_fill(rank < k, 0.0)
        t = a.shape[-1]
        a = residual * torch.eye(t, dtype=a.dtype, device=a.device) + (1 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def _check_rollout(residual: float, head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"attention_rollout: head_fusion='{head_fusion}' is unknown; use one of {list(HEAD_FUSIONS)}")
    if not 0 <= residual <= 1 or not 0 <= discard_ratio < 1:
        raise ValueError(f"attention_rollout: residual={residual} must lie in [0, 1] and discard_ratio={discard_ratio} "
                         "in [0, 1)")


@register_method("attention_rollout", family="attention")
def attention_rollout(model: nn.Module, x: torch.Tensor, target: torch.Tensor, residual: float = 0.5,
                      head_fusion: str = "mean", discard_ratio: float = 0.0,
                      patch_size: int | None = None, position: str | None = None) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): R = prod_l (r I + (1 - r) A_l), rows renormalised, heads fused.

    A_l are layer l's attention weights fused over heads (``head_fusion`` mean / max / min), the smallest
    ``discard_ratio`` of each row set to 0 first (Gildenblat's variant; 0 keeps all), ``residual`` r = 0.5
    accounts for the skip connection. The map is the class token's row (or, without a class token, the mean
    row) over the patch tokens, spread evenly over each patch's pixels and channels. Token ids: the row of the
    classifying ``position`` (``first`` real token, BERT's [CLS]; ``last`` real token, GPT-2 / Llama; ``mean`` of
    the real tokens' rows; None: ``last`` for models that classify from the last token, else ``first``) over every
    token, spread evenly over the D entries of its embedding, padding 0. Class-agnostic: ``target`` does not
    change it.
    """
    _check_rollout(residual, head_fusion, discard_ratio)
    if isinstance(model, EmbeddingsInput):
        return token_rollout(model, x, residual, head_fusion, discard_ratio, position)
    if position is not None:
        raise ValueError(f"attention_rollout: position={position!r} is for token ids; images read the class token's "
                         "row (or the mean row without one): leave position unset")
    n, c, h, w = x.shape
    p = _patch_grid(model, x, patch_size)
    hp, wp = h // p, w // p
    joint = rollout(attention_weights(model, x), residual, head_fusion, discard_ratio)
    t = joint.shape[-1]
    if t == hp * wp + 1:
        scores = joint[:, 0, 1:]
    elif t == hp * wp:
        scores = joint.mean(1)
    else:
        raise ValueError(f"attention_rollout: {t} tokens do not match a {hp}x{wp} patch grid (patch_size={p}) with "
                         "or without a class token; pass patch_size=")
    grid = scores.view(n, 1, hp, wp).repeat_interleave(p, 2).repeat_interleave(p, 3) / (p * p * c)
    out = torch.zeros(n, c, h, w, dtype=torch.float64, device=x.device)
    out[:, :, :hp * p, :wp * p] = grid
    return out.to(x.dtype)


def token_rollout(model: EmbeddingsInput, x: torch.Tensor, residual: float, head_fusion: str, discard_ratio: float,
                  position: str | None) -> torch.Tensor:
    """Attention rollout of a text classifier on its word embeddings x (N, T, D): the classifying position's row of
    the rollout over the real tokens (``attention_rollout``), spread evenly over D; padding 0."""
    position = position or ("last" if model.pooling == "last" else "first")
    if position not in POSITIONS:
        raise ValueError(f"attention_rollout: position={position!r} is unknown; use one of {list(POSITIONS)} (the "
                         "token the model classifies from) or None")
    n, t, d = x.shape
    real = model.tokens(x)
    joint = rollout(attention_weights(model, x), residual, head_fusion, discard_ratio, real)
    if joint.shape[-1] != t:
        raise ValueError(f"attention_rollout: the attention layers of {type(model.model).__name__} attend over "
                         f"{joint.shape[-1]} positions, the input has {t} tokens: rollout needs self-attention over "
                         "the tokens")
    rows = torch.arange(n, device=x.device)
    if position == "mean":
        scores = (joint * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True)
    elif position == "last":
        scores = joint[rows, last_positions(real.long())]
    else:
        scores = joint[rows, real.long().argmax(1)]  # the first real token
    scores = scores * real
    return (scores / d).unsqueeze(-1).expand(n, t, d).to(x.dtype).clone()
