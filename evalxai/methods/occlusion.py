"""Occlusion (Zeiler & Fergus 2014): the drop of the target score when a square window is replaced by a baseline.

R_i = mean over the windows w covering pixel i of (s(x) − s(x with w occluded)); windows of side ``patch``
slide with ``stride`` (a last window is aligned with the far edge so that every pixel is covered), over all
channels at once. All occluded copies are stacked into the batch dimension and forwarded in chunks.
"""
from __future__ import annotations

import torch
from torch import nn

from evalxai.core.baselines import reference
from evalxai.core.memory import images_per_chunk
from evalxai.core.scoring import batched_scores, check_patch, check_score_space, require_images
from evalxai.methods.registry import register_method


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of windows of side ``patch`` every ``stride`` pixels, the last one flush with the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def window_masks(h: int, w: int, patch: int, stride: int) -> torch.Tensor:
    """Boolean masks (W, H, W') of every occlusion window."""
    ys, xs = window_starts(h, patch, stride), window_starts(w, patch, stride)
    masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool)
    for i, (a, b) in enumerate((a, b) for a in ys for b in xs):
        masks[i, a:a + patch, b:b + patch] = True
    return masks


@register_method("occlusion")
def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, patch: int = 4, stride: int = 2,
              baseline: str | float | torch.Tensor = "zero", score_space: str = "logit", batch_size: int | None = None,
              seed: int = 0, low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
              mean: float | torch.Tensor | None = None) -> torch.Tensor:
    """Occlusion sensitivity: mean score drop over the ``patch`` x ``patch`` windows covering each pixel."""
    require_images(x, "occlusion")
    h, w = x.shape[-2:]
    check_patch(x, patch, "patch")
    if stride < 1:
        raise ValueError(f"stride={stride} must be >= 1")
    check_score_space(score_space)
    base = reference(x, baseline, mean=mean, low=low, high=high, seed=seed)
    masks = window_masks(h, w, patch, stride).to(x.device)
    n = len(x)
    with torch.no_grad():
        s0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
        total = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
        chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "occlusion") // n)  # windows at a time
        for i in range(0, len(masks), chunk):
            m = masks[i:i + chunk].view(-1, 1, 1, h, w)
            xs = torch.where(m, base.unsqueeze(0), x.unsqueeze(0))
            drop = s0.unsqueeze(0) - batched_scores(model, xs, target, score_space, batch_size)  # (W, N)
            total += torch.einsum("wn,whv->nhv", drop, masks[i:i + chunk].to(x.dtype))
    count = masks.sum(0).to(x.dtype)
    return (total / count).unsqueeze(1).expand_as(x).clone()
