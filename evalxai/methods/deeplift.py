"""DeepLIFT with the rescale rule (Shrikumar et al. 2017).

Every non-linearity's gradient is replaced by the multiplier m = Δy / Δz = (f(z) − f(z')) / (z − z'), z' being
its input on the reference; linear parts (linear, conv, eval-mode BatchNorm, average pooling, additions, shape
ops) keep their gradient. The chain rule for multipliers then gives R = (x − x') · m_total with summation to
delta, Σ R = f_c(x) − f_c(x'), exact on ReLU networks. Max-pooling is split the way captum does: the window's
Δy = [max(y, y') − y'] + [y − max(y, y')], the first part routed to the input's winner, the second to the
reference's winner, which keeps summation to delta exact. LocalResponseNorm keeps its gradient (summation to
delta then holds only approximately). Where |Δz| < ``eps`` the multiplier falls back to the gradient.

Cost: one forward on the references (no autograd) plus one forward and backward on the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.baselines import reference
from evalxai.methods.graph import (
    PASS_FUNCS,
    PASS_METHODS,
    PASS_MODULES,
    SOFTMAX_FUNCS,
    check_function,
    execute,
    is_relu,
    node_kind,
    refuse_tensors,
    trace,
)
from evalxai.methods.registry import register_method

_NOT_ELEMENTWISE = (nn.Softmax, nn.LogSoftmax, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.PReLU)
_MAXPOOL_MODULES = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}
_MAXPOOL_FUNCS = set(_MAXPOOL_MODULES.values())


def _rescale_kind(model: nn.Module, node) -> str | None:
    """'relu', 'elementwise', 'maxpool', 'unsupported' (refused on tensors) or None (keep the gradient)."""
    kind = node_kind(model, node, what="DeepLIFT")
    if kind == "unsupported":
        return kind
    if is_relu(model, node):
        return "relu"
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if isinstance(m, tuple(_MAXPOOL_MODULES)):
            return "maxpool"
        if kind == "pass" and isinstance(m, PASS_MODULES) and not isinstance(m, _NOT_ELEMENTWISE):
            return "elementwise"
    elif node.op == "call_function":
        if node.target in _MAXPOOL_FUNCS:
            return "maxpool"
        if node.target in PASS_FUNCS and node.target not in SOFTMAX_FUNCS:
            return "elementwise"
    elif node.op == "call_method" and node.target in PASS_METHODS:
        return "elementwise"
    return None


def _pool_with_indices(node, call, args, kwargs):
    """A function t -> (max-pool output, flat indices) equivalent to the node's max-pooling."""
    if node.op == "call_module":
        m = call
        fn = next(f for t, f in _MAXPOOL_MODULES.items() if isinstance(m, t))
        return lambda t: fn(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    rest, kw = args[1:], {k: v for k, v in kwargs.items() if k != "return_indices"}
    return lambda t: node.target(t, *rest, **kw, return_indices=True)


class _RescaleFn(torch.autograd.Function):
    """y = f(z); backward multiplies by (f(z) − f(z')) / (z − z'), the local gradient where z ≈ z'."""

    @staticmethod
    def forward(ctx, z, fn, z_ref, y_ref, eps, relu):
        y = fn(z)
        ctx.save_for_backward(z, y, z_ref, y_ref)
        ctx.fn, ctx.eps, ctx.relu = fn, eps, relu
        return y

    @staticmethod
    def backward(ctx, g):
        z, y, z_ref, y_ref = ctx.saved_tensors
        dz = z - z_ref
        if ctx.relu:
            local = g * (z > 0)
        else:
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                (local,) = torch.autograd.grad(ctx.fn(zz), zz, g)
        far = dz.abs() > ctx.eps
        m = g * (y - y_ref) / torch.where(far, dz, torch.ones_like(dz))
        return torch.where(far, m, local), None, None, None, None, None


class _MaxPoolRescaleFn(torch.autograd.Function):
    """Max-pooling whose backward routes each window's Δy to the winners of input and reference."""

    @staticmethod
    def forward(ctx, z, pool, z_ref, y_ref, idx_ref, eps):
        y, idx = pool(z)
        ctx.save_for_backward(z, z_ref, y, y_ref, idx, idx_ref)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        z, z_ref, y, y_ref, idx, idx_ref = ctx.saved_tensors
        top = torch.maximum(y, y_ref)
        n, c = z.shape[:2]
        contrib = torch.zeros(n, c, z[0, 0].numel(), dtype=g.dtype, device=g.device)
        contrib.scatter_add_(2, idx.reshape(n, c, -1), (g * (top - y_ref)).reshape(n, c, -1))
        contrib.scatter_add_(2, idx_ref.reshape(n, c, -1), (g * (y - top)).reshape(n, c, -1))
        grad = torch.zeros_like(contrib).scatter_add_(2, idx.reshape(n, c, -1), g.reshape(n, c, -1))
        contrib, grad = contrib.view_as(z), grad.view_as(z)
        dz = z - z_ref
        far = dz.abs() > ctx.eps
        return torch.where(far, contrib / torch.where(far, dz, torch.ones_like(dz)), grad), None, None, None, None, None


@register_method("deeplift")
def deeplift(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: str | float | torch.Tensor = "zero",
             eps: float = 1e-10, seed: int = 0, low: float | torch.Tensor | None = None,
             high: float | torch.Tensor | None = None, mean: float | torch.Tensor | None = None) -> torch.Tensor:
    """DeepLIFT rescale (Shrikumar 2017): (x − x') times the product of rescale multipliers; Σ R = f(x) − f(x')."""
    if eps < 0:
        raise ValueError(f"eps={eps} is negative: it is the |Δz| below which the gradient is used, e.g. 1e-10")
    graph = trace(model, x)
    kinds = {node: _rescale_kind(model, node) for node in graph.nodes}
    ref = reference(x, baseline, mean=mean, low=low, high=high, seed=seed).detach()
    saved: dict = {}

    def record(node, call, args, kwargs):
        if kinds[node] == "unsupported":
            refuse_tensors(model, node, args, kwargs, "DeepLIFT")
            return NotImplemented
        if kinds[node] == "maxpool":
            y_ref, idx_ref = _pool_with_indices(node, call, args, kwargs)(args[0])
            saved[node] = (args[0], y_ref, idx_ref)
            return y_ref
        if kinds[node] is not None:
            saved[node] = args[0]  # execute() runs in-place operations on a copy: this stays as it is
        return NotImplemented

    with torch.no_grad():
        check_function(model, ref, execute(model, graph, ref, record))  # the reference runs the model's function

    def rescale(node, call, args, kwargs):
        kind = kinds[node]
        if kind is None or kind == "unsupported":
            return NotImplemented
        if kind == "maxpool":
            return _MaxPoolRescaleFn.apply(args[0], _pool_with_indices(node, call, args, kwargs), *saved[node], eps)
        z_ref = saved[node]

        def fn(t):
            return t.clamp(min=0) if kind == "relu" else call(t.clone(), *args[1:], **kwargs)
        with torch.no_grad():
            y_ref = fn(z_ref)
        return _RescaleFn.apply(args[0], fn, z_ref, y_ref, eps, kind == "relu")

    xg = x.detach().requires_grad_(True)
    out = execute(model, graph, xg, rescale)
    check_function(model, xg, out)
    (m,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), xg)
    return (x - ref) * m
