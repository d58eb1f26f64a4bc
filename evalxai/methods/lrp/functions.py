"""The autograd Functions of the LRP engine: each runs one operation forward as the model does and gives its
relevance rule as the backward.

- ``LayerFn``: a linear or convolutional layer with the rule of the composite (``evalxai.methods.lrp.rules``).
- ``PassFn``: relevance passes unchanged (element-wise activations, a softmax at the output); ``ReluPassFn`` a ReLU
  whose mask cannot change the relevance (``plan.relu_passes``).
- ``LinearizedFn``: the proportional Norm rule of a linear, bias-free operation (average pooling, mean) and the
  first-order Taylor linearisation of LocalResponseNorm (Binder et al. 2016; ``lrn_denominator``).
- ``SumFn``: a residual addition split in proportion to the summands.
- ``GroupNormFn``: GroupNorm with the group normaliser held constant (as ``NormLayerFn``).
- ``ProductFn``, ``SoftmaxFn``, ``NormLayerFn``: the transformer rules (AttnLRP, Achtibat et al. 2024: the uniform
  rule for products of two relevance-carrying tensors, the epsilon rule for products with a constant, the softmax's
  Taylor rule; LayerNorm / RMSNorm with the normaliser as a constant).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.methods.graph import LRPError
from evalxai.methods.lrp.rules import divide

_SAVED = object()  # marks the places of saved tensors in a rule's state


class LayerFn(torch.autograd.Function):
    """z = layer(a) forward; backward: the rule's R_in from R (``layer``: {"op": LinearOp, "rule": Rule, "hook"})."""

    @staticmethod
    def forward(ctx, a, layer):
        op, rule = layer["op"], layer["rule"]
        z0, state = rule.output_and_state(op, a)
        # The state's tensors go through save_for_backward: kept as a plain ctx attribute, the output z0 (which
        # LRP-0/epsilon/gamma keep) would close a cycle output -> graph node -> ctx -> output that Python's gc cannot
        # see, and every call would leak its layers' outputs.
        items = state if isinstance(state, tuple) else (state,)
        ctx.is_tuple = isinstance(state, tuple)
        ctx.others = [_SAVED if isinstance(s, torch.Tensor) else s for s in items]
        ctx.layer = layer
        ctx.save_for_backward(a, *[s for s in items if isinstance(s, torch.Tensor)])
        return z0

    @staticmethod
    def backward(ctx, r):
        a, *tensors = ctx.saved_tensors
        tensors = iter(tensors)
        items = tuple(next(tensors) if s is _SAVED else s for s in ctx.others)
        state = items if ctx.is_tuple else items[0]
        layer = ctx.layer
        r_in = layer["rule"].backward(layer["op"], a, state, r)
        if layer["hook"] is not None:
            layer["hook"](r, r_in)
        return r_in, None


class PassFn(torch.autograd.Function):
    """Forward: ``out`` (computed from ``a``); backward: relevance passes to ``a`` unchanged (same shape only)."""

    @staticmethod
    def forward(ctx, a, out):
        ctx.shape = a.shape
        return out.clone()

    @staticmethod
    def backward(ctx, r):
        if r.shape != ctx.shape:
            raise LRPError("a pass-through layer changed the tensor shape; it needs a rule of its own")
        return r, None


class ReluPassFn(torch.autograd.Function):
    """Forward: relu(a); backward: relevance passes unchanged, for a ReLU whose readers give zero relevance wherever
    its output is zero (``plan.relu_passes``): the gradient's mask would change nothing there."""

    @staticmethod
    def forward(ctx, a):
        return torch.relu(a)

    @staticmethod
    def backward(ctx, r):
        return r


class LinearizedFn(torch.autograd.Function):
    """R_in = a * J_f(a)^T (R / stab(z)): contributions a_j dy_k/da_j of y = f(a), normalised by z = denom(a, y).

    With ``denom`` = y this is the proportional Norm rule of a linear, bias-free f (pooling, mean); for
    LocalResponseNorm ``denom`` is J a = y (1 - 2 beta (D - k) / D), D = k + alpha * window mean of a^2 (Binder
    et al. 2016 linearisation; normalising by J a makes sum R_in = sum R_out up to the stabiliser).
    """

    @staticmethod
    def forward(ctx, a, f, denom, eps, hook):
        ctx.denom, ctx.eps, ctx.hook = denom, eps, hook
        with torch.enable_grad():  # keep f's own graph: its vjp in backward needs no second evaluation of f
            ctx.a, ctx.y = a.detach().requires_grad_(True), None
            ctx.y = f(ctx.a)
        return ctx.y.detach()

    @staticmethod
    def backward(ctx, r):
        a, y = ctx.a, ctx.y
        (c,) = torch.autograd.grad(y, a, divide(r, ctx.denom(a.detach(), y.detach()), ctx.eps))
        ctx.a = ctx.y = None
        a = a.detach()
        r_in = a * c
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None, None


class SumFn(torch.autograd.Function):
    """Residual addition z = a + alpha b: R_a = a R / stab(z), R_b = alpha b R / stab(z) (proportional split)."""

    @staticmethod
    def forward(ctx, a, b, alpha, eps, hook):
        ctx.alpha, ctx.eps, ctx.hook = alpha, eps, hook
        z = torch.add(a, b, alpha=alpha)
        ctx.save_for_backward(a, b, z)  # z kept, not recomputed (the executor never overwrites a kept tensor)
        return z

    @staticmethod
    def backward(ctx, r):
        a, b, z = ctx.saved_tensors
        s = divide(r, z, ctx.eps)
        ra = a * s  # shaped like r: per sample also for a broadcast constant addend
        rb = s.mul_(b) if s.shape == r.shape and s.dtype == b.dtype else b * s
        if ctx.alpha != 1:
            rb.mul_(ctx.alpha)
        if ctx.hook is not None:
            ctx.hook(r, (ra, rb))
        return ra.sum_to_size(a.shape), rb.sum_to_size(b.shape), None, None, None


class ProductFn(torch.autograd.Function):
    """y = f(a, b), bilinear (``matmul``, ``bmm``, ``einsum``, ``*``) or linear in ``a`` (division by a constant):
    R_a = w_a a (J_a^T s), R_b = w_b b (J_b^T s), s = R / stab(y). Two relevance-carrying factors get the uniform
    rule (w_a = w_b = 1/2, AttnLRP Prop. 3.3: the epsilon rule over the sum, each product split equally); a
    constant factor (w = 0) makes f linear in the other, which then gets the epsilon rule (w = 1). ``fn`` None is
    ``a @ b * scale`` (attention scores and outputs), whose products are written out, with no autograd graph; a
    number ``scale`` cancels in s and leaves the rule unchanged."""

    @staticmethod
    def forward(ctx, a, b, fn, wa, wb, eps, hook, scale=None):
        ctx.fn, ctx.w, ctx.eps, ctx.hook = fn, (wa, wb), eps, hook
        if fn is None:
            y = torch.matmul(a, b)
            if scale is not None:
                y.mul_(scale)
            ctx.save_for_backward(a, b, y)
            ctx.scale = 1.0 if scale is None else scale
            return y
        with torch.enable_grad():  # keep f's graph: the vector-Jacobian products in backward need no re-run of f
            ctx.a = a.detach().requires_grad_(wa != 0)
            ctx.b = b.detach().requires_grad_(wb != 0)
            ctx.y = fn(ctx.a, ctx.b)
        return ctx.y.detach()

    @staticmethod
    def backward(ctx, r):
        wa, wb = ctx.w
        if ctx.fn is None:
            a, b, y = ctx.saved_tensors
            s = divide(r, y, ctx.eps * abs(ctx.scale))  # = R / stab(a @ b) * scale: epsilon on the unscaled product
            w = wa or wb  # the uniform rule's 1/2 (or 1 for a constant factor) folded into s: one pass for both
            if ctx.scale * w != 1.0:
                s.mul_(ctx.scale * w)
            ra = None if not wa else torch.matmul(s, b.mT).sum_to_size(a.shape).mul_(a)
            rb = None if not wb else torch.matmul(a.mT, s).sum_to_size(b.shape).mul_(b)
            if ra is not None and wa != w:
                ra.mul_(wa / w)
            if rb is not None and wb != w:
                rb.mul_(wb / w)
            out = [ra, rb]
        else:
            a, b, y = ctx.a, ctx.b, ctx.y
            ctx.a = ctx.b = ctx.y = None
            inputs = [t for t, w in zip((a, b), ctx.w) if w]
            grads = iter(torch.autograd.grad(y, inputs, divide(r, y.detach(), ctx.eps)))
            out = [None if not w else next(grads).mul_(t.detach()).mul_(w) for t, w in zip((a, b), ctx.w)]
        if ctx.hook is not None:
            ctx.hook(r, tuple(o for o in out if o is not None))
        return out[0], out[1], None, None, None, None, None, None


class SoftmaxFn(torch.autograd.Function):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1): the first-order Taylor expansion at x with the
    bias absorbing relevance, R_in = x * (R - s * sum_dim R), s = softmax(x). Inputs of -inf (masked) get 0."""

    @staticmethod
    def forward(ctx, x, dim, hook, fn=None):
        s = torch.softmax(x, dim) if fn is None else fn(x)
        ctx.dim, ctx.hook = dim, hook
        ctx.save_for_backward(x, s)
        return s

    @staticmethod
    def backward(ctx, r):
        x, s = ctx.saved_tensors
        r_in = (s * r.sum(ctx.dim, keepdim=True)).neg_().add_(r).mul_(x).nan_to_num_(0.0, 0.0, 0.0)  # x = -inf
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None


class NormLayerFn(torch.autograd.Function):
    """LayerNorm / RMSNorm with the normaliser sigma held constant: y = C a / sigma * w + b (C centres, or is the
    identity for RMSNorm), linear in a; the epsilon rule R_a = a * C^T (w / sigma * R / stab(y))."""

    @staticmethod
    def forward(ctx, a, shape, weight, bias, norm_eps, rms, eps, hook):
        dims = tuple(range(-len(shape), 0))
        if rms:
            norm_eps = torch.finfo(a.dtype).eps if norm_eps is None else norm_eps
            inv = torch.rsqrt(a.pow(2).mean(dims, keepdim=True).add_(norm_eps))
            y = F.rms_norm(a, shape, weight, norm_eps)
        else:
            y, _, inv = torch.native_layer_norm(a, shape, weight, bias, norm_eps)  # inv: 1 / sigma
        ctx.dims, ctx.rms, ctx.eps, ctx.hook = dims, rms, eps, hook
        ctx.save_for_backward(a, y, inv, weight)
        return y

    @staticmethod
    def backward(ctx, r):
        a, y, inv, weight = ctx.saved_tensors
        g = divide(r, y, ctx.eps).mul_(inv)
        if weight is not None:
            g.mul_(weight)
        if not ctx.rms:
            g = g - g.mean(ctx.dims, keepdim=True)
        r_in = g.mul_(a)
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None, None, None, None, None


class GroupNormFn(torch.autograd.Function):
    """GroupNorm (Wu & He 2018) with each group's normaliser sigma held constant, as AttnLRP holds LayerNorm's
    (Achtibat et al. 2024, Sec. 3.3; Ali et al. 2022 for LayerNorm): y = C_g a / sigma_g * w + b, C_g centring over
    the channels and positions of group g, is linear in a; the epsilon rule R_a = a * C_g^T (w / sigma_g * R /
    stab(y)). sum R_a = sum R - sum b R / stab(y): conserved without the affine bias (up to the stabiliser)."""

    @staticmethod
    def forward(ctx, a, groups, weight, bias, norm_eps, eps, hook):
        y = F.group_norm(a, groups, weight, bias, norm_eps)
        g = a.reshape(a.shape[0], groups, -1)
        inv = torch.rsqrt(g.var(-1, unbiased=False, keepdim=True).add_(norm_eps))
        ctx.groups, ctx.eps, ctx.hook = groups, eps, hook
        ctx.save_for_backward(a, y, inv, weight)
        return y

    @staticmethod
    def backward(ctx, r):
        a, y, inv, weight = ctx.saved_tensors
        s = divide(r, y, ctx.eps)
        if weight is not None:
            s.mul_(weight.view(1, -1, *[1] * (a.dim() - 2)))
        s = s.reshape(a.shape[0], ctx.groups, -1).mul_(inv)
        s = (s - s.mean(-1, keepdim=True)).reshape(a.shape)
        r_in = s.mul_(a)
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None, None, None, None


def lrn_denominator(a: torch.Tensor, m: nn.LocalResponseNorm) -> torch.Tensor:
    """D = k + alpha * mean over the channel window of a^2, so that LRN(a) = a / D^beta (as torch computes it)."""
    sq = a.pow(2).unsqueeze(1)
    pad = (m.size // 2, (m.size - 1) // 2)
    if a.dim() == 3:
        d = F.avg_pool2d(F.pad(sq, (0, 0, *pad)), (m.size, 1), stride=1).squeeze(1)
    else:
        shape = sq.shape
        sq = sq.reshape(shape[0], 1, shape[2], shape[3], -1)
        d = F.avg_pool3d(F.pad(sq, (0, 0, 0, 0, *pad)), (m.size, 1, 1), stride=1).squeeze(1).reshape(a.shape)
    return d * m.alpha + m.k
