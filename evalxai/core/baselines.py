"""Reference inputs: one definition of ``zero``, ``mean``, ``uniform`` and ``blur`` for every method and metric.

The same names mean the same values wherever a reference input is needed: the path start of Integrated
Gradients, DeepLIFT's reference, occlusion's fill, the values removed features take in pixel flipping and
selectivity, and the reference of the conservation metric. Every definition is per sample, so a sample's
reference does not depend on the batch it is in:

- ``zero``: a black image, every value ``low`` (the model-space value of pixel 0: 0 for unnormalised inputs, the
  per-channel (0 - mean) / std for inputs normalised by the dataset; the pipeline passes it).
- ``mean``: the given ``mean`` (the training-set mean image, or per-channel values broadcastable to one input);
  without one, each sample's own per-channel mean (as Quantus's "mean" perturbation).
- ``uniform``: i.i.d. U[low, high] per element (``low`` / ``high``: the input bounds, floats or tensors
  broadcastable to one input; None: ``DATA_RANGE``, see ``data_range``), drawn per sample from ``seed`` and the
  sample's content (``evalxai.core.seeding``).
- ``blur``: a Gaussian blur of the sample, sigma ``BLUR_SIGMA`` pixels (Sturmfels et al. 2020, "Visualizing the
  impact of feature attribution baselines"), reflect-padded, per channel.
- a number (every element) or a tensor broadcastable to x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evalxai.core.scoring import require_images
from evalxai.core.seeding import per_sample_noise

BASELINES = ("zero", "mean", "uniform", "blur")
BLUR_SIGMA = 5.0
DATA_RANGE = (0.0, 1.0)  # the input bounds [low, high] where none are given: unnormalised pixels


def data_range(low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
               like: torch.Tensor | None = None) -> tuple:
    """The data range (low, high): the model-space values of a black and a white pixel (the pipeline passes the
    dataset's), ``DATA_RANGE`` for a bound given as None; the one default of every method, metric and activation
    maximisation. With ``like``: tensors of its dtype and device (broadcastable to one input)."""
    low, high = (DATA_RANGE[0] if low is None else low), (DATA_RANGE[1] if high is None else high)
    if like is None:
        return low, high
    return tuple(torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in (low, high))


def to_pixels(x: torch.Tensor, low: float | torch.Tensor | None = None,
              high: float | torch.Tensor | None = None) -> torch.Tensor:
    """x mapped from model space to pixel space, (x - low) / (high - low): black 0, white 1 per channel."""
    lo, hi = data_range(low, high, x)
    return (x - lo) / (hi - lo)


def reference(x: torch.Tensor, baseline: str | float | torch.Tensor, *, mean: float | torch.Tensor | None = None,
              low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
              seed: int = 0) -> torch.Tensor:
    """The reference input for each sample of x, shaped like x (see the module docstring); ``low`` / ``high``
    as in ``data_range``."""
    low, high = data_range(low, high)
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(x).clone()
    if baseline == "mean":
        if mean is None:
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x)
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        if m.dim() == 1 and x.dim() > 2 and len(m) == x.shape[1]:  # per-channel values
            m = m.view(-1, *[1] * (x.dim() - 2))
        return (m if m.dim() == x.dim() else m.unsqueeze(0)).expand_as(x)
    if baseline == "uniform":
        lo, hi = data_range(low, high, x)
        return lo + (hi - lo) * per_sample_noise(x, seed, 1, "uniform")[0]
    if baseline == "blur":
        return gaussian_blur(x, BLUR_SIGMA)
    raise ValueError(f"unknown baseline {baseline!r}: use one of {list(BASELINES)}, a number or a tensor")


def baseline_label(baseline: str | float | torch.Tensor) -> str:
    """How the table records a baseline: its name (``zero`` is a black image in pixel space), or its kind."""
    return baseline if isinstance(baseline, str) else "tensor" if isinstance(baseline, torch.Tensor) else str(baseline)


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
