"""Occlusion (Zeiler & Fergus 2014): the drop of the target score when a square window is replaced by a baseline.

R_i = mean over the windows w covering pixel i of (s(x) − s(x with w occluded)); windows of side ``patch``
slide with ``stride`` (a last window is aligned with the far edge so that every pixel is covered), over all
channels at once. All occluded copies are stacked into the batch dimension and forwarded in chunks.

Token ids (the word embeddings of ``evalxai.models.EmbeddingsInput``): one token at a time, leave-one-out as in
ERASER (DeYoung et al. 2020) and Li et al. 2016 ("Understanding neural networks through representation erasure"):
R_t = s(x) − s(x with token t's embedding replaced by the baseline's), ``patch`` and ``stride`` unused.
"""
from __future__ import annotations

import torch
from torch import nn

from evalxai.core.baselines import reference
from evalxai.core.memory import images_per_chunk
from evalxai.core.scoring import batched_scores, check_patch, check_score_space, require_images
from evalxai.methods.registry import register_method
from evalxai.models.text import EmbeddingsInput


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
              mean: float | torch.Tensor | None = None, pad_id: int | None = None, mask_id: int | None = None,
              unk_id: int | None = None) -> torch.Tensor:
    """Occlusion sensitivity: mean score drop over the ``patch`` x ``patch`` windows covering each pixel.

    Token ids: the score drop when one token's embedding is replaced by the baseline (``zero``: the zero embedding,
    ``pad`` / ``mask`` / ``unk``: that token's, its id ``pad_id`` / ``mask_id`` / ``unk_id`` or the model config's),
    spread evenly over the D entries of the token's embedding; padding is never occluded and gets 0."""
    if isinstance(model, EmbeddingsInput):
        check_score_space(score_space)
        ref = model.reference(x, baseline, "occlusion", pad_id=pad_id, mask_id=mask_id, unk_id=unk_id)
        return token_occlusion(model, x, target, ref, score_space, batch_size)
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


def token_occlusion(model: EmbeddingsInput, x: torch.Tensor, target: torch.Tensor, ref: torch.Tensor,
                    score_space: str, batch_size: int | None) -> torch.Tensor:
    """Leave-one-token-out on word embeddings x (N, T, D) with reference embeddings ``ref`` (N, T, D): the score
    drop of each real token, spread evenly over D (N, T, D); padding 0. The copies with one token replaced (one per
    real position, all samples of the group share the mask) are stacked and forwarded in chunks."""
    mask = model.attention_mask
    if mask is not None and mask.shape[0] != 1 and len(x) != 1:
        raise ValueError(f"occlusion: EmbeddingsInput has {mask.shape[0]} mask rows; it stacks occluded copies of "
                         "its samples, so give one mask row for all of them (evalxai.explain groups samples by mask)")
    n, t, d = x.shape
    positions = torch.nonzero(model.tokens(x)[0]).flatten()
    drops = torch.zeros(n, t, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        s0 = batched_scores(model, x.unsqueeze(0), target, score_space, batch_size)[0]
        chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "occlusion") // n)  # positions at a time
        for i in range(0, len(positions), chunk):
            pos = positions[i:i + chunk]
            one = (torch.arange(t, device=x.device) == pos[:, None]).view(len(pos), 1, t, 1)  # (P, 1, T, 1)
            xs = torch.where(one, ref.unsqueeze(0), x.unsqueeze(0))  # (P, N, T, D): token pos[k] replaced in copy k
            drops[:, pos] = (s0.unsqueeze(0) - batched_scores(model, xs, target, score_space, batch_size)).T
    return (drops / d).unsqueeze(-1).expand_as(x).clone()
