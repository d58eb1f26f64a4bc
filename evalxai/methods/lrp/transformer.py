"""The transformer part of the LRP engine: the relevance rules of attention and normalisation layers.

Transformers (AttnLRP, Achtibat et al. 2024; CP-LRP, Ali et al. 2022; see ``TransformerOps``): LayerNorm and
RMSNorm with the normaliser as a constant (epsilon rule on what remains linear), products of two relevance-carrying
tensors (``matmul``, ``bmm``, ``einsum``, ``*``) by the uniform rule, products with a constant by the epsilon
rule, the softmax of an attention (its weights multiply a relevance-carrying tensor) by AttnLRP's rule
R_in = x (R - s sum R) or, with ``Composite.softmax="constant"`` (CP-LRP), as a constant; ``nn.MultiheadAttention``
and ``F.scaled_dot_product_attention`` are decomposed into those operations, ``nn.TransformerEncoder(Layer)`` into
attention, LayerNorms, linear layers and additions. A softmax at the model's output passes relevance unchanged (with
a warning, as before); any other softmax is an error (``evalxai.methods.lrp.plan``).

``transformer_step`` runs one traced node of a transformer kind (``TRANSFORMER_KINDS``) with its rule.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.methods.graph import LRPError, bind_arguments, owner, refuse_tensors
from evalxai.methods.lrp.composites import Composite
from evalxai.methods.lrp.functions import (
    GroupNormFn,
    LayerFn,
    LinearizedFn,
    NormLayerFn,
    PassFn,
    ProductFn,
    SoftmaxFn,
    SumFn,
)
from evalxai.methods.lrp.plan import CONV_PROTO, LINEAR_PROTO, merged_weights
from evalxai.methods.lrp.rules import LinearOp, Rule
from evalxai.methods.tracing import is_rms_norm

TRANSFORMER_KINDS = {"softmax", "product", "layernorm", "groupnorm", "flinear", "mha", "sdpa", "sub", "neg", "rescale",
                     "encoder"}


class TransformerOps:
    """Relevance-propagating building blocks of attention, shared by the traced graph and the decompositions of
    ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``."""

    def __init__(self, composite: Composite, eps: float, hook_for):
        self.composite, self.eps, self.hook_for = composite, eps, hook_for
        self.constant_softmax = composite.softmax == "constant"

    def linear(self, name: str, x, w, b, module: nn.Module = LINEAR_PROTO, rule: Rule | None = None):
        rule = rule or self.composite.rule_for(name, module, False)
        w = w.detach()
        layer = {"op": LinearOp(module, w, None if b is None else b.detach()), "rule": rule,
                 "hook": self.hook_for(name, rule.name)}
        return LayerFn.apply(x, layer)

    def product(self, name: str, fn, a, b, carries=(True, True), scale=None):
        """fn(a, b) by the uniform / epsilon rule (``ProductFn``); ``fn`` None: ``a @ b * scale``. A factor
        carries relevance when ``carries`` says so and it depends on the input in this run (requires grad: the model
        is frozen), so a learned attention query (``mha(q0.expand(B, -1, -1), h, h)``) is a constant."""
        ca, cb = carries[0] and a.requires_grad, carries[1] and b.requires_grad
        if not (ca or cb):
            y = torch.matmul(a, b) if fn is None else fn(a, b)
            return y if scale is None else y * scale
        w = (0.5, 0.5) if ca and cb else (1.0, 0.0) if ca else (0.0, 1.0)
        return ProductFn.apply(a, b, fn, *w, self.eps, self.hook_for(name, "uniform" if ca and cb else "epsilon"),
                               scale)

    def add(self, name: str, a, b):
        return SumFn.apply(a, b, 1, self.eps, self.hook_for(name, "sum"))

    def softmax(self, name: str, x, dim: int, fn=None):
        """softmax(x) over ``dim`` (``fn(x)`` if given): AttnLRP's rule, or a constant for CP-LRP."""
        if self.constant_softmax:
            with torch.no_grad():
                return torch.softmax(x, dim) if fn is None else fn(x)
        return SoftmaxFn.apply(x, dim, self.hook_for(name, "softmax"), fn)

    def attention(self, name: str, q, k, v, mask=None, scale=None):
        """softmax(q k^T * scale + mask) v over the last two dimensions; a boolean ``mask`` is True where
        attention is allowed. Returns (output, attention weights)."""
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = self.product(f"{name}.qk", None, q, k.transpose(-2, -1), scale=scale)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = self.add(f"{name}.mask", scores, mask.to(scores.dtype).expand_as(scores))
        a = self.softmax(f"{name}.softmax", scores, -1)
        out = self.product(f"{name}.av", None, a, v, (not self.constant_softmax, True))
        return out, a

    def sdpa(self, name: str, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        """``F.scaled_dot_product_attention`` decomposed (no dropout: an explanation needs a fixed forward)."""
        if dropout_p:
            raise LRPError(f"scaled_dot_product_attention '{name}' has dropout_p={dropout_p}: LRP needs a fixed "
                           "forward; pass dropout_p=0.0 in eval mode (e.g. dropout_p=p if self.training else 0.0)")
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
        mask = attn_mask
        if is_causal:
            ql, kl = query.shape[-2], key.shape[-2]
            mask = torch.ones(ql, kl, dtype=torch.bool, device=query.device).tril()
        return self.attention(name, query, key, value, mask, scale)[0]

    def mha(self, name: str, m: nn.MultiheadAttention, query, key, value, key_padding_mask=None, need_weights=True,
            attn_mask=None, average_attn_weights=True, is_causal=False):
        """``nn.MultiheadAttention`` decomposed: packed (or separate) in-projections and the out-projection by the
        composite's linear rule, then ``attention``; ``batch_first`` either way, unbatched inputs too."""
        if m.bias_k is not None or m.add_zero_attn:
            raise LRPError(f"nn.MultiheadAttention '{name}' with add_bias_kv or add_zero_attn has no LRP rule: "
                           "build it without them")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if not m.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        e, h = m.embed_dim, m.num_heads
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        if m._qkv_same_embed_dim and query is key and key is value:  # self-attention: one packed projection
            q, k, v = self.linear(f"{name}.in_proj", query, m.in_proj_weight, m.in_proj_bias, m.out_proj).chunk(3, -1)
        else:
            if m._qkv_same_embed_dim:
                wq, wk, wv = m.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            bq, bk, bv = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
            q = self.linear(f"{name}.in_proj_q", query, wq, bq, m.out_proj)
            k = self.linear(f"{name}.in_proj_k", key, wk, bk, m.out_proj)
            v = self.linear(f"{name}.in_proj_v", value, wv, bv, m.out_proj)
        q, k, v = (t.reshape(n, t.shape[1], h, e // h).transpose(1, 2) for t in (q, k, v))
        mask = _mha_mask(attn_mask, key_padding_mask, n, h, lq, lk, q.dtype)
        o, a = self.attention(name, q, k, v, mask)
        o = o.transpose(1, 2).reshape(n, lq, e)
        out = self.linear(f"{name}.out_proj", o, m.out_proj.weight, m.out_proj.bias, m.out_proj)
        if not m.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = a.detach().mean(1) if average_attn_weights else a.detach()
            weights = weights.squeeze(0) if unbatched else weights
        return out, weights

    def layer_norm(self, name: str, m: nn.LayerNorm, x):
        return NormLayerFn.apply(x, tuple(m.normalized_shape), None if m.weight is None else m.weight.detach(),
                                 None if m.bias is None else m.bias.detach(), m.eps, False, self.eps,
                                 self.hook_for(name, "layernorm"))

    def encoder(self, name: str, m: nn.Module, src, mask=None, src_key_padding_mask=None, is_causal=None, **kw):
        """``nn.TransformerEncoderLayer`` (pre- or post-norm) and ``nn.TransformerEncoder`` written out: attention
        as ``mha``, LayerNorms, linear layers, the activation (ReLU keeps its gradient, others pass relevance
        unchanged), residual additions; dropout is off in eval mode."""
        if isinstance(m, nn.TransformerEncoder):
            x, keep = src, nested_tokens(m, src, mask, src_key_padding_mask)
            for i, layer in enumerate(m.layers):
                x = self.encoder(f"{name}.layers.{i}", layer, x, mask, src_key_padding_mask)
            if keep is not None:  # torch's nested-tensor path: padded positions come out 0 (a constant gate)
                x = x * keep.unsqueeze(-1).to(x.dtype)
            return x if m.norm is None else self.layer_norm(f"{name}.norm", m.norm, x)
        if kw or not isinstance(m.norm1, nn.LayerNorm):
            raise LRPError(f"TransformerEncoderLayer '{name}': arguments {sorted(kw)} or norm "
                           f"{type(m.norm1).__name__} have no LRP rule")

        def sa(h):
            return self.mha(f"{name}.self_attn", m.self_attn, h, h, h, key_padding_mask=src_key_padding_mask,
                            need_weights=False, attn_mask=mask)[0]

        def ff(h):
            h = self.linear(f"{name}.linear1", h, m.linear1.weight, m.linear1.bias, m.linear1)
            act = m.activation
            if act in (F.relu, torch.relu) or isinstance(act, nn.ReLU):
                h = torch.relu(h)
            else:
                h = PassFn.apply(h, act(h).detach())
            return self.linear(f"{name}.linear2", h, m.linear2.weight, m.linear2.bias, m.linear2)

        x = src
        if m.norm_first:
            x = self.add(f"{name}.add1", x, sa(self.layer_norm(f"{name}.norm1", m.norm1, x)))
            return self.add(f"{name}.add2", x, ff(self.layer_norm(f"{name}.norm2", m.norm2, x)))
        x = self.layer_norm(f"{name}.norm1", m.norm1, self.add(f"{name}.add1", x, sa(x)))
        return self.layer_norm(f"{name}.norm2", m.norm2, self.add(f"{name}.add2", x, ff(x)))


def nested_tokens(m: nn.TransformerEncoder, src, mask, src_key_padding_mask) -> torch.Tensor | None:
    """The tokens (N, T) that ``nn.TransformerEncoder`` keeps when it takes torch's nested-tensor fast path (eval
    mode, no gradients, a left-aligned key-padding mask and no attention mask: the conditions of its ``forward``);
    the outputs at the other positions are 0 there. None when it takes the ordinary path."""
    if src_key_padding_mask is None or mask is not None or src.dim() != 3 or m.layers[0].training:
        return None
    if not (torch.backends.mha.get_fastpath_enabled() and getattr(m, "use_nested_tensor", False)) or \
            torch.is_autocast_enabled():
        return None
    pad = src_key_padding_mask
    keep = pad.logical_not() if pad.dtype == torch.bool else pad == 0  # a float mask adds -inf where padded
    left_aligned = bool((keep[:, 1:] <= keep[:, :-1]).all())
    return keep if left_aligned or not getattr(m, "mask_check", True) else None


def _mha_mask(attn_mask, key_padding_mask, n, h, lq, lk, dtype):
    """nn.MultiheadAttention's masks (boolean: True = not allowed; float: added) as one additive (n, h, lq, lk)
    mask, or None."""
    total = None
    for mask in (attn_mask, key_padding_mask):
        if mask is None:
            continue
        if mask is key_padding_mask:
            mask = mask.view(n, 1, 1, lk)
        elif mask.dim() == 3:
            mask = mask.view(n, h, lq, lk)
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.to(dtype)
        total = mask if total is None else total + mask
    return None if total is None else total.expand(n, h, lq, lk)


def transformer_step(model, node, step, name, call, args, kwargs, ops: TransformerOps, eps, hook_for):
    """Run one transformer node with its relevance rule (see ``TransformerOps``)."""
    kind = step.kind
    if kind == "softmax":
        return ops.softmax(name, args[0], _softmax_dim(model, node, args, kwargs),
                           lambda t: call(t, *args[1:], **kwargs))
    if kind == "layernorm":
        if node.op == "call_module":
            m = step.module
            if is_rms_norm(m):  # a library's RMSNorm class: weight * x / rms(x), in its own precision
                return library_rms_norm(name, m, args[0], eps, hook_for)
            rms = isinstance(m, nn.RMSNorm)
            shape, w, b, e = m.normalized_shape, m.weight, getattr(m, "bias", None), m.eps
        else:
            rms = node.target is F.rms_norm
            bound = bind_arguments(F.rms_norm if rms else F.layer_norm, args, kwargs)
            shape, w, b = bound["normalized_shape"], bound.get("weight"), bound.get("bias")
            e = bound.get("eps", None if rms else 1e-5)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return NormLayerFn.apply(args[0], shape, None if w is None else w.detach(), None if b is None else b.detach(),
                                 e, rms, eps, hook_for(name, "layernorm"))
    if kind == "flinear":  # F.linear, F.conv1d/2d/3d: the composite's linear / conv rule (BatchNorm merged)
        bound = bind_arguments(node.target, args, kwargs)
        if node.target is torch.addmm:  # bias + x @ W (GPT-2's Conv1D): F.linear(x, W^T, bias)
            if bound["beta"] != 1 or bound["alpha"] != 1:
                raise LRPError(f"addmm (graph node '{node.name}') with beta or alpha other than 1 has no LRP rule")
            return ops.linear(name, bound["input"], bound["weight"].t(), bound["bias"], rule=step.rule)
        w, b = merged_weights(None, step.bn, bound["weight"], bound.get("bias"))
        if node.target is F.linear:
            return ops.linear(name, bound["input"], w, b, rule=step.rule)
        conv = {k: bound.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))}
        layer = {"op": LinearOp(CONV_PROTO, w, b, conv, step.nonneg_in, step.relu_out), "rule": step.rule,
                 "hook": hook_for(name, step.rule.name)}
        return LayerFn.apply(bound["input"], layer)
    if kind == "groupnorm":
        if node.op == "call_module":
            m = step.module
            groups, w, b, e = m.num_groups, m.weight, m.bias, m.eps
        else:
            bound = bind_arguments(F.group_norm, args, kwargs)
            groups, w, b, e = bound["num_groups"], bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5)
        return GroupNormFn.apply(args[0], groups, None if w is None else w.detach(),
                                 None if b is None else b.detach(), e, eps, hook_for(name, "groupnorm"))
    if kind == "mha":
        return ops.mha(name, step.module, *args, **kwargs)
    if kind == "encoder":
        return ops.encoder(name, step.module, *args, **kwargs)
    if kind == "sdpa":
        return ops.sdpa(name, *args, **kwargs)
    if kind in ("neg", "rescale"):  # -x, x / ||x|| with the norm constant (Swin V2's cosine attention): R unchanged
        return PassFn.apply(args[0], call(*args, **kwargs).detach())
    if kind == "sub":
        if not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return NotImplemented  # a number: a constant shift, relevance passes unchanged
        return SumFn.apply(args[0], args[1], -kwargs.get("alpha", 1), eps, hook_for(name, "sum"))
    # product
    if node.op == "call_function" and node.target is torch.einsum:
        eq, vals = args[0], list(args[1:])
        if len(vals) == 1 and isinstance(vals[0], (list, tuple)):
            vals = list(vals[0])
        if len(vals) == 1:  # one operand: a linear map (permutation, sum), the proportional rule
            return LinearizedFn.apply(vals[0], lambda t: torch.einsum(eq, t), lambda a, y: y, eps,
                                      hook_for(name, "norm"))
        if len(vals) != 2:
            raise LRPError(f"einsum of {len(vals)} tensors (graph node '{node.name}') in {owner(model, node)} has no "
                           "LRP rule: split it into products of two")
        fn = lambda a, b: torch.einsum(eq, a, b)  # noqa: E731
    elif len(args) > 1:
        vals, rest = [args[0], args[1]], args[2:]
        fn = lambda a, b: call(a, b, *rest, **kwargs)  # noqa: E731
    else:
        key = next(iter(kwargs))
        vals, kw = [args[0], kwargs[key]], {k: v for k, v in kwargs.items() if k != key}
        fn = lambda a, b: call(a, **{key: b}, **kw)  # noqa: E731
    carries = [c and isinstance(v, torch.Tensor) and v.requires_grad for c, v in zip(step.carries, vals)]
    if not any(carries):
        return NotImplemented
    if all(carries) and vals[0] is vals[1]:  # x * x is a power (a non-linearity), not a product of two signals
        op = getattr(node.target, "__name__", node.target)
        raise LRPError(f"operation '{op}' (graph node '{node.name}') in {owner(model, node)} multiplies a tensor by "
                       "itself (a power): LRP's uniform rule is for products of two different tensors; replace it "
                       "or explain with a gradient method")
    if node.target in (operator.truediv, torch.div, "div") and carries[1]:  # division by the input: no rule
        refuse_tensors(model, node, args, kwargs, "LRP")
    if not all(isinstance(v, torch.Tensor) for v in vals):  # times a number: linear, relevance unchanged
        carrier = vals[0] if carries[0] else vals[1]
        out = call(*args, **kwargs)
        if out.shape != carrier.shape:
            return NotImplemented
        return PassFn.apply(carrier, out.detach())
    return ops.product(name, fn, vals[0], vals[1], tuple(carries))


def library_rms_norm(name: str, m: nn.Module, x: torch.Tensor, eps: float, hook_for) -> torch.Tensor:
    """A library's RMSNorm (``is_rms_norm``: Llama's) by ``NormLayerFn``'s rule with the normaliser held constant (as
    LXT's ``rms_norm_forward``), the forward value the module's own (it may normalise in float32); an error where the
    module does not compute weight * x / rms(x) (Gemma's (1 + weight), for instance)."""
    e = getattr(m, "variance_epsilon", getattr(m, "eps", None))
    shape = tuple(m.weight.shape)
    y = NormLayerFn.apply(x, shape, m.weight.detach(), None, e, True, eps, hook_for(name, "layernorm"))
    with torch.no_grad():
        out = m(x)
    tol = 1e-4 if x.dtype == torch.float64 else 1e-2
    if out.shape != y.shape or not torch.allclose(out, y.detach(), rtol=tol, atol=tol * float(out.abs().max())):
        raise LRPError(f"module '{name}' ({type(m).__name__}) does not compute weight * x / rms(x): no LRP rule for "
                       "it; replace it by torch.nn.RMSNorm or explain with a gradient method")
    return y + (out - y).detach()


def _softmax_dim(model, node, args, kwargs) -> int:
    if node.op == "call_module":
        dim = model.get_submodule(node.target).dim
    else:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None:
        raise LRPError(f"softmax (graph node '{node.name}') without dim: give dim=-1")
    return dim

