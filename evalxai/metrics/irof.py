"""IROF, iterative removal of features (Rieger & Hansen 2020, "IROF: a low resource evaluation metric for
explanation methods"): superpixels are removed most relevant first and the area over the normalised score curve
is the metric.

Superpixels come from scikit-image's SLIC (``segmentation="slic"``, the paper's and Quantus's choice) or, where
scikit-image is not installed or ``segmentation="grid"``, from a fixed grid of about ``n_segments`` square cells.
The table records which segmentation was used.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.core.baselines import baseline_label, reference, to_pixels
from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import require_images
from evalxai.core.seeding import sample_generators
from evalxai.metrics.common import UNSET, batched_scores, check_score_space, scalar_rows
from evalxai.metrics.faithfulness import inverse_permutation
from evalxai.metrics.registry import register_metric

SEGMENTATIONS = ("slic", "grid")


def grid_segments(x: torch.Tensor, n_segments: int) -> torch.Tensor:
    """(N, H, W) labels of a grid of square cells, about ``n_segments`` of them (side ceil(sqrt(H W / n)))."""
    h, w = x.shape[-2:]
    side = max(1, math.ceil(math.sqrt(h * w / max(1, n_segments))))
    rows = torch.arange(h, device=x.device) // side
    cols = torch.arange(w, device=x.device) // side
    labels = rows.view(-1, 1) * math.ceil(w / side) + cols.view(1, -1)
    return labels.expand(len(x), h, w).clone()


def slic_available() -> bool:
    try:
        import skimage.segmentation  # noqa: F401
    except ImportError:
        return False
    return True


def superpixels(x: torch.Tensor, segmentation: str = "slic", n_segments: int = 100, compactness: float = 10.0
                ) -> tuple[torch.Tensor, str]:
    """(labels (N, H, W) int64 numbered 0..K_n-1 per sample, segmentation used). SLIC runs per image on x as given
    (``irof`` gives it the pixel-space image), channels last, float64, ``start_label=0`` (Quantus's call: skimage's
    defaults, Lab conversion for three channels, which assumes RGB in [0, 1]); without scikit-image it falls back
    to ``grid_segments`` with a warning."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"irof: unknown segmentation {segmentation!r}: use one of {list(SEGMENTATIONS)}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 2:
        raise ValueError(f"irof: n_segments={n_segments!r} must be an int >= 2 (about how many superpixels)")
    if segmentation == "slic" and not slic_available():
        warnings.warn("irof: scikit-image is not installed; superpixels fall back to a grid (segmentation='grid'). "
                      "pip install scikit-image for SLIC", stacklevel=3)
        segmentation = "grid"
    if segmentation == "grid":
        return grid_segments(x, n_segments), "grid"
    from skimage.segmentation import slic

    imgs = x.detach().double().cpu().permute(0, 2, 3, 1).numpy()
    labels = []
    for img in imgs:  # SLIC is a per-image CPU routine
        seg = slic(img, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
        labels.append(np.unique(seg, return_inverse=True)[1].reshape(seg.shape))
    return torch.as_tensor(np.stack(labels), dtype=torch.long, device=x.device), "slic"


def segment_order(x: torch.Tensor, labels: torch.Tensor, attributions: torch.Tensor,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank (N, K) of each segment in the removal order, K_n (N,), mean relevance (N, K)): segments by decreasing
    mean relevance (over their pixels and the channels); equal means in a random order drawn per sample; padding
    segments (k >= K_n) last."""
    n = len(x)
    flat = labels.view(n, -1)
    counts_n = flat.max(1).values + 1
    k_max = int(counts_n.max())
    rel = attributions.double().mean(1).reshape(n, -1)
    total = torch.zeros(n, k_max, dtype=torch.float64, device=x.device).scatter_add_(1, flat, rel)
    count = torch.zeros(n, k_max, dtype=torch.float64, device=x.device).scatter_add_(1, flat, torch.ones_like(rel))
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, -math.inf))
    # random tie order: per-sample keys of a fixed length (the pixel count), so the first K_n do not depend on the batch
    keys = torch.stack([torch.rand(flat.shape[1], generator=g, dtype=torch.float64)
                        for g in sample_generators(x, seed)])
    perm = keys[:, :k_max].to(x.device).argsort(1)
    order = perm.gather(1, torch.sort(-mean.gather(1, perm), dim=1, stable=True).indices)
    return inverse_permutation(order), counts_n, mean


@register_metric("irof", family="faithfulness", directions={"irof": "higher", "curve": "none"})
def irof(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
         segmentation: str = "slic", n_segments: int = 100, compactness: float = 10.0,
         baseline: str | float | torch.Tensor = "mean", score_space: str = "softmax", seed: int = 0,
         batch_size: int | None = None, low: float | torch.Tensor | None = None,
         high: float | torch.Tensor | None = None) -> pd.DataFrame:
    """IROF: area over the curve y_k / y_0 as superpixels are removed by decreasing mean relevance (higher better).

    Rieger & Hansen 2020: segment x into K superpixels, order them by mean relevance, replace the first k by the
    baseline (``mean``: each image's own per-channel mean, the paper's choice) for k = 0..K, record the class score
    (softmax) y_k; IROF = 1 - trapezoid(y_k / y_0 over k / K), i.e. the area over the normalised curve on [0, 1].
    Rows: ``curve`` (step k, fraction k / K_n, value y_k / y_0; K_n varies per image) and the scalar ``irof``;
    column ``segmentation`` records SLIC or grid. SLIC segments the image in pixel space, (x - low) / (high - low)
    with the data range ``low`` / ``high`` (``evalxai.core.baselines.to_pixels``), so normalised inputs get the segments
    of their pixels. Forwards per sample: K_n + 1 (about ``n_segments``).
    NaN: y_0 <= 0 (only possible with logits; the ratio has no meaning then). Flipped predictions are kept.
    Deviation from Quantus 0.6: Quantus sums K - trapezoid over steps 1..K (unnormalised, no y_0 point, so a
    curve that never drops scores 1, not 0, and the scale grows with the segment count), its ``mean`` baseline is
    recomputed from the already-perturbed image at every step, and its ``get_aoc_score`` uses ``np.trapz``
    (removed in NumPy 2.4).
    """
    check_score_space(score_space)
    require_images(x, "irof")
    labels, used = superpixels(to_pixels(x, low, high), segmentation, n_segments, compactness)
    rank, counts, _ = segment_order(x, labels, attributions, seed)
    n, k_max = len(x), rank.shape[1]
    base = reference(x, baseline, low=low, high=high, seed=seed)
    pix_rank = rank.gather(1, labels.view(n, -1)).view(n, 1, *x.shape[-2:])  # removal position of each pixel
    chunk = max(1, images_per_chunk(model, x, "forward", batch_size, "irof") // n)
    ys = []
    for i in chunked(k_max + 1, chunk, "irof removal steps"):
        ks = torch.arange(i, min(i + chunk, k_max + 1), device=x.device).view(-1, 1, 1, 1, 1)
        xs = torch.where(pix_rank.unsqueeze(0) < ks, base.unsqueeze(0), x.unsqueeze(0))
        ys.append(batched_scores(model, xs, target, score_space, batch_size))
    y = torch.cat(ys).double().cpu().numpy()  # (K_max + 1, N)
    y0 = y[0]
    ok = y0 > 0
    ratio = y / np.where(ok, y0, 1.0)
    kn = counts.cpu().numpy()
    steps = np.arange(k_max + 1)[:, None]
    inside = steps <= kn[None, :]  # steps beyond K_n repeat the fully removed image
    last = ratio[kn, np.arange(n)]
    area = ((ratio * inside).sum(0) - (ratio[0] + last) / 2) / kn  # trapezoid with spacing 1 / K_n
    score = np.where(ok, 1.0 - area, np.nan)
    ratio = np.where(ok[None, :], ratio, np.nan)
    k_idx, s_idx = np.nonzero(inside)
    curve = pd.DataFrame({"sample": s_idx, "step": k_idx, "fraction": k_idx / kn[s_idx],
                          "value": ratio[k_idx, s_idx], "measure": "curve", "direction": UNSET})
    curve = curve.sort_values(["step", "sample"], kind="stable")
    out = pd.concat([curve, scalar_rows(score, "irof")], ignore_index=True)
    out["score_space"] = score_space
    out["baseline"] = baseline_label(baseline)
    out["segmentation"] = used
    out["segments"] = np.concatenate([kn[curve["sample"].to_numpy()], kn])
    return out
