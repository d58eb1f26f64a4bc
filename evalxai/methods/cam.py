"""Class activation maps: CAM (Zhou 2016), Grad-CAM (Selvaraju 2017), Grad-CAM++ (Chattopadhay 2018).

Each map is computed on the feature maps A (N, K, h, w) of one layer and bilinearly upsampled to the input
size, the same map on every input channel.
- ``cam``: Σ_k w_ck A_k for models ending in global average pooling + one Linear layer (w = its weights);
  the mean of the map plus the bias is the logit. Signed (no ReLU), as in the paper.
- ``grad_cam``: ReLU(Σ_k α_k A_k), α_k = spatial mean of ∂f_c/∂A_k.
- ``grad_cam_pp``: ReLU(Σ_k w_k A_k), w_k = Σ_ij a_kij ReLU(g_kij), a = g² / (2g² + Σ_ab A_kab g³), g = ∂f_c/∂A
  (the closed form for an exponentiated score).
``layer`` names the module whose output is A. Default: the last module, in execution order, that is or contains
a convolution and outputs a spatial map (``features`` in lenet and vgg_bn, ``layer2`` in resnet_small) —
in a residual net the last convolution alone may be a shortcut branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.methods.graph import check_function, execute, trace
from evalxai.methods.registry import register_method

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class CAMError(ValueError):
    """The model does not have the structure a CAM method needs."""


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(s, _CONV) for s in m.modules())


def layer_activation(model: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(logits, activation A of ``layer`` with its graph, layer name) from one forward with temporary hooks."""
    if layer is not None:
        names = dict(model.named_modules())
        if layer not in names or layer == "":
            convs = [n for n, m in model.named_modules() if n and _has_conv(m)]
            raise CAMError(f"layer '{layer}' is not a module of {type(model).__name__}: use one of {convs}")
        candidates = {layer: names[layer]}
    else:
        candidates = {n: m for n, m in model.named_modules() if n and _has_conv(m)}
        if not candidates:
            raise CAMError(f"{type(model).__name__} has no convolution: CAM methods need convolutional feature "
                           "maps (use gradient or an LRP method)")
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.append((n, o))) for n, m in candidates.items()]
    try:
        out = model(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    spatial = [(n, a) for n, a in seen if isinstance(a, torch.Tensor) and a.dim() >= 3 and a[0, 0].numel() > 1]
    if not spatial:
        what = f"layer '{layer}'" if layer else "no convolutional module"
        raise CAMError(f"{what} outputs a spatial feature map (N, K, h, w): name a convolutional layer with layer=")
    name, act = spatial[-1]
    return out, act, name


def upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Map (N, h, w) -> shaped like x (N, C, H, W): bilinear resize, repeated over channels."""
    if x.dim() != 4 or cam.dim() != 3:
        raise CAMError(f"CAM methods need image inputs (N, C, H, W) and 2-D feature maps, got {tuple(x.shape)}")
    up = F.interpolate(cam.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up.expand_as(x).clone()


def _target_grad(out, act, target):
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), act)
    return g


@register_method("grad_cam")
def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None,
             relu: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju 2017): ReLU(Σ_k mean_ij(∂f_c/∂A_kij) A_k), upsampled to the input."""
    out, act, _ = layer_activation(model, x, layer)
    g = _target_grad(out, act, target)
    weights = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)
    cam = (weights * act).sum(1).detach()
    return upsample(cam.clamp(min=0) if relu else cam, x)


@register_method("grad_cam_pp")
def grad_cam_pp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay 2018): ReLU(Σ_k Σ_ij a_kij ReLU(g_kij) A_k), a = g² / (2g² + Σ A g³)."""
    out, act, _ = layer_activation(model, x, layer)
    g = _target_grad(out, act, target).detach()
    a = act.detach()
    dims = tuple(range(2, g.dim()))
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + (a * g3).sum(dims, keepdim=True)
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * g.clamp(min=0)).sum(dims, keepdim=True)
    return upsample((weights * a).sum(1).clamp(min=0), x)


def _gap_linear(model: nn.Module, x: torch.Tensor):
    """(pooled feature node, final Linear module) if the traced model ends in global average pooling + Linear."""
    try:
        graph = trace(model, x)
    except Exception as err:  # noqa: BLE001
        raise CAMError(f"cam traces the model with torch.fx and failed ({err}); use grad_cam") from None
    out = next(n for n in graph.nodes if n.op == "output")
    node = out.args[0]
    fc = None
    if getattr(node, "op", None) == "call_module" and isinstance(model.get_submodule(node.target), nn.Linear):
        fc = model.get_submodule(node.target)
        node = node.args[0]
    while getattr(node, "op", None) in ("call_module", "call_function", "call_method") and _is_shape_op(model, node):
        node = node.args[0]
    if fc is None or not _is_global_pool(model, node):
        raise CAMError(f"cam needs a model whose forward ends in global average pooling followed by one Linear "
                       f"layer; {type(model).__name__} does not: use grad_cam (any convolutional model)")
    return node, fc


def _is_shape_op(model, node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), (nn.Flatten, nn.Dropout, nn.Identity))
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.squeeze, torch.reshape, F.dropout)
    return node.target in ("view", "reshape", "flatten", "squeeze")


def _is_global_pool(model, node) -> bool:
    if getattr(node, "op", None) == "call_module":
        m = model.get_submodule(node.target)
        size = m.output_size if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)) else None
        return size is not None and all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))
    if getattr(node, "op", None) == "call_function" and node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,)))
    if getattr(node, "op", None) in ("call_function", "call_method") and node.target in (torch.mean, "mean"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dims if isinstance(dims, (tuple, list)) else [dims]
        return dims[0] is not None and sorted(d % 4 for d in dims) == [2, 3]
    return False


@register_method("cam")
def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou 2016): Σ_k w_ck A_k of the feature maps before global average pooling, upsampled to the input."""
    pool, fc = _gap_linear(model, x)
    feats = {}

    def grab(node, call, args, kwargs):
        if node is pool:
            feats["a"] = args[0]
        return NotImplemented

    with torch.no_grad():
        check_function(model, x, execute(model, trace(model, x), x, grab))
    a = feats["a"]
    w = fc.weight.detach()[target]  # (N, K)
    return upsample(torch.einsum("nk...,nk->n...", a, w), x)
