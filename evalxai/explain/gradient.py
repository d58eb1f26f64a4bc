"""Gradient-family explainers and model-independent controls.

gradient (signed df_c/dx), sensitivity ((df_c/dx)^2, Montavon 2018), gradient x input (simple Taylor),
Integrated Gradients (Sundararajan 2017), SmoothGrad (Smilkov 2017), Guided Backprop (Springenberg 2015),
Deconvnet (Zeiler 2014), and the controls ``random`` and ``edge`` (Sobel magnitude).
Every method: ``f(model, x, target, **params) -> Tensor`` shaped like x, batched, per-sample results
independent of the batch size (seeded noise is drawn per sample from the sample's own content).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.explain.registry import register_method
from evalxai.scoring import require_images


def target_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d f_target / d x for a batch (one backward pass)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded by ``seed`` and the sample's bytes: draws do not depend on batching."""
    flat = x.detach().reshape(len(x), -1).double().cpu()
    weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64).sin()
    keys = ((flat * weights).sum(1) * 1e6).round().long().tolist()
    return [torch.Generator().manual_seed((seed * 1_000_003 + k) % (2**63 - 1)) for k in keys]


def per_sample_noise(x: torch.Tensor, seed: int, samples: int, kind: str = "normal") -> torch.Tensor:
    """Noise of shape (samples, N, *x.shape[1:]) drawn per sample from ``sample_generators`` (in float64 for
    float64 inputs, else float32), filled in place: no per-sample temporaries."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    noise = torch.empty(len(x), samples, *x.shape[1:], dtype=dtype)
    for i, g in enumerate(sample_generators(x, seed)):
        if kind == "normal":
            noise[i].normal_(generator=g)
        else:
            noise[i].uniform_(generator=g)
    return noise.transpose(0, 1).to(x)


def _chunks(total: int, size: int):
    for i in range(0, total, size):
        yield slice(i, min(i + size, total))


def _check_steps(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


@register_method("gradient")
def gradient(model, x, target):
    """Signed gradient of the target logit (Simonyan 2014 without the absolute value)."""
    return target_grad(model, x, target)


@register_method("sensitivity")
def sensitivity(model, x, target):
    """Sensitivity analysis (Montavon 2018): the squared gradient (df_c/dx)^2."""
    return target_grad(model, x, target) ** 2


@register_method("gradient_x_input")
def gradient_x_input(model, x, target):
    """Gradient x input (simple Taylor decomposition at 0)."""
    return target_grad(model, x, target) * x


def make_baseline(x: torch.Tensor, baseline, mean: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Reference input: ``zero``, ``mean`` (given mean image), ``blur`` (Gaussian, sigma 5 px), ``uniform``,
    a number or a tensor."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        if mean is None:
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).clone()
        return mean.to(x).expand_as(x)
    if baseline == "blur":
        return gaussian_blur(x, sigma=5.0)
    if baseline == "uniform":
        lo, hi = x.amin(), x.amax()
        return lo + (hi - lo) * per_sample_noise(x, seed, 1, "uniform")[0]
    raise ValueError(f"unknown baseline '{baseline}': use zero, mean, blur, uniform, a number or a tensor")


def gaussian_blur(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, reflect-padded, per channel; kernel radius 3 sigma unless
    given (RISE's canvas: sigma 5, radius 5, i.e. an 11-tap kernel)."""
    require_images(x, "blur")
    radius = max(1, int(3 * sigma)) if radius is None else int(radius)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    y = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    kh = k[radius - pad_h: radius + pad_h + 1]
    kw = k[radius - pad_w: radius + pad_w + 1]
    y = F.conv2d(y, (kh / kh.sum()).view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, (kw / kw.sum()).view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


@register_method("integrated_gradients", baseline="zero", steps=32, batch_size=512, seed=0)
def integrated_gradients(model, x, target, baseline="zero", steps=32, batch_size=512, seed=0, mean=None):
    """Integrated Gradients (Sundararajan 2017): (x - x') * mean_k grad f(x' + a_k (x - x')), midpoint rule.

    The path points are stacked into the batch dimension and run in chunks of ``batch_size``.
    Completeness: sum R -> f(x) - f(x') as ``steps`` grows.
    """
    steps = _check_steps("steps", steps)
    ref = make_baseline(x, baseline, mean, seed)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    n = len(x)
    total = torch.zeros_like(x)
    per_chunk = max(1, batch_size // max(n, 1))
    for sl in _chunks(steps, per_chunk):
        a = alphas[sl].view(-1, *[1] * x.dim())
        path = (ref.unsqueeze(0) + a * (x - ref).unsqueeze(0)).reshape(-1, *x.shape[1:])
        g = target_grad(model, path, target.repeat(sl.stop - sl.start))
        total += g.view(-1, *x.shape).sum(0)
    return (x - ref) * total / steps


@register_method("smoothgrad", samples=32, noise=0.15, batch_size=512, seed=0)
def smoothgrad(model, x, target, samples=32, noise=0.15, batch_size=512, seed=0):
    """SmoothGrad (Smilkov 2017): mean gradient over x + N(0, s^2), s = noise * (max(x_i) - min(x_i)) per sample."""
    samples = _check_steps("samples", samples)
    if noise < 0:
        raise ValueError(f"noise={noise} is negative: give the noise level as a fraction of the input range")
    span = (x.reshape(len(x), -1).amax(1) - x.reshape(len(x), -1).amin(1)).view(-1, *[1] * (x.dim() - 1))
    eps = per_sample_noise(x, seed, samples) * (noise * span).unsqueeze(0)
    total = torch.zeros_like(x)
    per_chunk = max(1, batch_size // max(len(x), 1))
    for sl in _chunks(samples, per_chunk):
        noisy = (x.unsqueeze(0) + eps[sl]).reshape(-1, *x.shape[1:])
        total += target_grad(model, noisy, target.repeat(sl.stop - sl.start)).view(-1, *x.shape).sum(0)
    return total / samples


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mode):
        ctx.mode = mode
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        if ctx.mode == "guided":  # Springenberg 2015: forward mask and positive gradient
            return g.clamp(min=0) * (z > 0), None
        return g.clamp(min=0), None  # Zeiler 2014: the ReLU applied to the backward signal only


def _relu_modified_grad(model, x, target, mode):
    from evalxai.explain.lrp.engine import _trace, execute, is_relu

    graph = _trace(model)

    def handle(node, call, args, kwargs):
        if is_relu(model, node):
            return _GuidedReLU.apply(args[0], mode)
        return NotImplemented

    x = x.detach().requires_grad_(True)
    out = execute(model, graph, x, handle)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


@register_method("guided_backprop")
def guided_backprop(model, x, target):
    """Guided Backprop (Springenberg 2015): ReLU backward passes only positive gradients where the input was > 0."""
    return _relu_modified_grad(model, x, target, "guided")


@register_method("deconvnet")
def deconvnet(model, x, target):
    """Deconvnet (Zeiler & Fergus 2014): ReLU backward rectifies the gradient, ignoring the forward mask."""
    return _relu_modified_grad(model, x, target, "deconv")


@register_method("random", family="control", seed=0)
def random_map(model, x, target, seed=0):
    """Control: uniform noise in [-1, 1], seeded per sample (model-independent)."""
    return per_sample_noise(x, seed, 1, "uniform")[0] * 2 - 1


@register_method("edge", family="control")
def edge(model, x, target):
    """Control: Sobel gradient magnitude of the input (summed over channels, repeated per channel)."""
    require_images(x, "edge")
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, k.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    gy = F.conv2d(xp, k.t().reshape(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    mag = (gx ** 2 + gy ** 2).sqrt().sum(1, keepdim=True)
    return mag.expand_as(x).clone()
