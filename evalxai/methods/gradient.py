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

from evalxai.core.baselines import reference
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import require_images
from evalxai.core.seeding import noise_draws, per_sample_noise
from evalxai.methods.graph import check_function, execute, is_relu, trace
from evalxai.methods.registry import register_method
from evalxai.models.text import EmbeddingsInput


def target_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d f_target / d x for a batch (one backward pass)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


def _check_steps(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


@register_method("gradient")
def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Signed gradient of the target logit (Simonyan 2014 without the absolute value)."""
    return target_grad(model, x, target)


@register_method("sensitivity")
def sensitivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sensitivity analysis (Montavon 2018): the squared gradient (df_c/dx)^2."""
    return target_grad(model, x, target) ** 2


@register_method("gradient_x_input")
def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: str = "zero",
                     pad_id: int | None = None, mask_id: int | None = None, unk_id: int | None = None) -> torch.Tensor:
    """Gradient x input (simple Taylor decomposition at 0).

    Token ids: grad x (e - e'), e' the ``baseline``'s word embeddings (``zero``, or the ``pad`` / ``mask`` / ``unk``
    token's at every real token, see ``EmbeddingsInput.reference``); images take ``zero`` only."""
    grad = target_grad(model, x, target)
    if isinstance(model, EmbeddingsInput):
        return grad * (x - model.reference(x, baseline, "gradient_x_input", pad_id=pad_id, mask_id=mask_id,
                                           unk_id=unk_id))
    if baseline != "zero":
        raise ValueError(f"gradient_x_input: baseline={baseline!r} is for token ids (pad, mask, unk); on float inputs "
                         "it is x times the gradient (baseline 'zero'): use integrated_gradients for a reference")
    return grad * x


def _path_gradients(model, x, target, n_points: int, points, images_per_call: int) -> torch.Tensor:
    """sum_k grad f(points(k, n)) over k < n_points for every sample n: the (point, sample) pairs are flattened and
    run ``images_per_call`` at a time, each chunk built only when it runs (never the whole stack in memory)."""
    n = len(x)
    total = torch.zeros_like(x)
    for start in chunked(n_points * n, images_per_call, "gradient passes"):
        flat = torch.arange(start, min(start + images_per_call, n_points * n), device=x.device)
        ks, ns = flat // n, flat % n
        g = target_grad(model, points(ks, ns), target[ns])
        total.index_add_(0, ns, g)
    return total


@register_method("integrated_gradients")
def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                         baseline: str | float | torch.Tensor = "zero", steps: int = 32, batch_size: int | None = None,
                         seed: int = 0, low: float | torch.Tensor | None = None,
                         high: float | torch.Tensor | None = None,
                         mean: float | torch.Tensor | None = None, pad_id: int | None = None,
                         mask_id: int | None = None, unk_id: int | None = None) -> torch.Tensor:
    """Integrated Gradients (Sundararajan 2017): (x - x') * mean_k grad f(x' + a_k (x - x')), midpoint rule.

    x' is ``evalxai.core.baselines.reference`` (``low``/``high``: the bounds of the ``uniform`` baseline); for token
    ids the word embeddings of ``baseline`` ``zero`` or the ``pad`` / ``mask`` / ``unk`` token (id ``pad_id`` /
    ``mask_id`` / ``unk_id``, else the model config's) at every real token (``EmbeddingsInput.reference``). The path
    points are stacked into the batch dimension in chunks sized by the memory budget (``evalxai.core.memory``; an int
    ``batch_size`` caps a chunk). Completeness: sum R -> f(x) - f(x') as ``steps`` grows.
    """
    steps = _check_steps("steps", steps)
    if isinstance(model, EmbeddingsInput):
        ref = model.reference(x, baseline, "integrated_gradients", pad_id=pad_id, mask_id=mask_id, unk_id=unk_id)
    else:
        ref = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    diff = x - ref
    shape = (-1, *[1] * (x.dim() - 1))
    chunk = images_per_chunk(model, x, "gradient", batch_size, "integrated_gradients")
    total = _path_gradients(model, x, target, steps, lambda ks, ns: ref[ns] + alphas[ks].view(shape) * diff[ns], chunk)
    return diff * total / steps


@register_method("smoothgrad")
def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, samples: int = 32, noise: float = 0.15,
               batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """SmoothGrad (Smilkov 2017): mean gradient over x + N(0, s^2), s = noise * (max(x_i) - min(x_i)) per sample.

    Token ids: x are the word embeddings and the range is that of the real tokens' embedding entries (padding
    excluded). The noisy copies are drawn per chunk (sized by the memory budget), never all at once; each draw comes
    from its own seeded generator (``evalxai.core.seeding.noise_draws``), so the chunking does not change the map."""
    samples = _check_steps("samples", samples)
    if noise < 0:
        raise ValueError(f"noise={noise} is negative: give the noise level as a fraction of the input range")
    flat = x.reshape(len(x), -1)
    if isinstance(model, EmbeddingsInput):  # the range of the real tokens' embeddings
        real = model.tokens(x).unsqueeze(-1).expand_as(x).reshape(len(x), -1)
        hi, lo = flat.masked_fill(~real, float("-inf")).amax(1), flat.masked_fill(~real, float("inf")).amin(1)
    else:
        hi, lo = flat.amax(1), flat.amin(1)
    sigma = (noise * (hi - lo)).view(-1, *[1] * (x.dim() - 1))

    def noisy(ks, ns):
        out = torch.empty((len(ks), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for k in ks.unique().tolist():  # one draw index at a time: the draws of sample n for index k
            rows = (ks == k).nonzero().squeeze(1)
            out[rows] = x[ns[rows]] + noise_draws(x[ns[rows]], seed, [k])[0] * sigma[ns[rows]]
        return out

    chunk = images_per_chunk(model, x, "gradient", batch_size, "smoothgrad")
    return _path_gradients(model, x, target, samples, noisy, chunk) / samples


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
    graph = trace(model, x)

    def handle(node, call, args, kwargs):
        if is_relu(model, node):
            return _GuidedReLU.apply(args[0], mode)
        return NotImplemented

    x = x.detach().requires_grad_(True)
    out = execute(model, graph, x, handle)
    check_function(model, x, out)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


@register_method("guided_backprop")
def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Guided Backprop (Springenberg 2015): ReLU backward passes only positive gradients where the input was > 0."""
    return _relu_modified_grad(model, x, target, "guided")


@register_method("deconvnet")
def deconvnet(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): ReLU backward rectifies the gradient, ignoring the forward mask."""
    return _relu_modified_grad(model, x, target, "deconv")


@register_method("random", family="control")
def random_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Control: uniform noise in [-1, 1], seeded per sample (model-independent)."""
    return per_sample_noise(x, seed, 1, "uniform")[0] * 2 - 1


@register_method("edge", family="control")
def edge(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Control: Sobel gradient magnitude of the input (summed over channels, repeated per channel)."""
    require_images(x, "edge")
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, k.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    gy = F.conv2d(xp, k.t().reshape(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    mag = (gx ** 2 + gy ** 2).sqrt().sum(1, keepdim=True)
    return mag.expand_as(x).clone()
