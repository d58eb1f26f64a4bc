"""Focus (Arias-Duart et al. 2022): explain a 2 x 2 mosaic of which two tiles show the target class.

The mosaic's positions are its ground truth, so Focus needs no masks: it needs a ``pool`` of candidate tiles
(images in model space with their int labels; the pipeline takes it from the train split, API users pass it).
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.scoring import require_images
from evalxai.core.seeding import sample_generators
from evalxai.core.validate import check_pool
from evalxai.metrics.common import explain_stack, explainer, scalar_rows
from evalxai.metrics.registry import Passes, register_metric


def mosaic_plan(x: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, from its own generator (seeded by ``seed`` and its bytes, so batching does not matter): the pool
    indices of one more target-class tile and two tiles of other classes, and the quadrant order.

    Returns ``tiles`` (N, 4) long, pool indices with -1 for the sample itself, in quadrant order (top-left,
    top-right, bottom-left, bottom-right), and ``is_target`` (N, 4) bool."""
    n = len(x)
    lab = labels.cpu()
    split = {c: (torch.nonzero(lab == c).flatten().tolist(), torch.nonzero(lab != c).flatten().tolist())
             for c in target.cpu().unique().tolist()}
    chosen, orders = [], []
    for c, g in zip(target.tolist(), sample_generators(x, seed)):
        same, other = split[c]
        if len(same) < 1 or len(other) < 2:
            raise ValueError(f"the pool of metric 'focus' has {len(same)} image(s) of class {c} and {len(other)} of "
                             "other classes: it needs at least 1 and 2 (give a larger pool)")
        mate = same[int(torch.randint(len(same), (1,), generator=g))]
        others = [other[i] for i in torch.randperm(len(other), generator=g)[:2].tolist()]
        orders.append(torch.randperm(4, generator=g))
        chosen.append([-1, mate, *others])  # the sample, its mate, two others
    order = torch.stack(orders)  # quadrant of each chosen tile
    tiles = torch.empty(n, 4, dtype=torch.long).scatter_(1, order, torch.tensor(chosen))
    is_target = torch.zeros(n, 4, dtype=torch.bool).scatter_(1, order[:, :2], True)
    return tiles, is_target


def build_mosaics(x: torch.Tensor, images: torch.Tensor, tiles: torch.Tensor, full_size: bool) -> torch.Tensor:
    """2 x 2 mosaics (N, C, H', W'): tile t of sample n is x[n] if tiles[n, t] == -1, else images[tiles[n, t]].
    Tiles are downscaled by 2 (area averaging = 2 x 2 average pooling on even sides) so that H' = H, W' = W; with
    ``full_size`` they keep their size (H' = 2H, W' = 2W)."""
    n, c, h, w = x.shape
    own = (tiles < 0).view(n, 4, 1, 1, 1).to(x.device)
    src = torch.where(own, x.unsqueeze(1), images[tiles.clamp(min=0).to(images.device)].to(x.device))
    if full_size or (h % 2 == 0 and w % 2 == 0):  # four equal tiles: one downscale, one rearrangement
        if not full_size:
            src = F.interpolate(src.view(4 * n, c, h, w), size=(h // 2, w // 2), mode="area")
        th, tw = src.shape[-2:]
        return src.view(n, 2, 2, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, 2 * th, 2 * tw)
    hs, ws = (h // 2, h - h // 2), (w // 2, w - w // 2)
    return torch.cat([torch.cat([F.interpolate(src[:, 2 * r + q], size=(hs[r], ws[q]), mode="area")
                                 for q in range(2)], -1) for r in range(2)], -2)


def quadrant_masks(shape: tuple[int, int], is_target: torch.Tensor, full_size: bool,
                   size: tuple[int, int]) -> torch.Tensor:
    """Pixel masks (N, H', W') of the target quadrants of each mosaic."""
    h, w = size
    top, left = (h, w) if full_size else (h // 2, w // 2)
    hh, ww = shape
    row = torch.arange(hh) >= top
    col = torch.arange(ww) >= left
    quad = (row[:, None].long() * 2 + col[None, :].long())  # (H', W') quadrant index
    return is_target[:, quad]


@register_metric("focus", family="localisation", directions={"focus": "higher"}, needs=("pool", "method"),
                 cost=lambda model, x, p: Passes(0, 1))
def focus(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
          pool: tuple[torch.Tensor, torch.Tensor] | None = None, method: str | Callable | dict | None = None,
          method_params: dict | None = None, batch_size: int | None = None, seed: int = 0,
          full_size: bool = False) -> pd.DataFrame:
    """Focus (Arias-Duart et al. 2022): share of the mosaic's positive relevance that falls on the target-class tiles.

    Per sample a 2 x 2 mosaic holds the sample, one more pool image of its class and two of other classes, drawn
    (with their quadrants) from the sample's own generator (``seed``), so scores do not depend on the batch. Tiles
    are downscaled 2x by average pooling, so the mosaic has the model's input size (``full_size=true`` keeps them,
    for models that take 2H x 2W inputs). The mosaic is explained with the run's ``method`` (``method_params``,
    ``batch_size`` at most per call) for the sample's target; r = sum_c R_c and
    focus = sum_{target quadrants} r+ / sum r+. A map that ignores the tiles' content spreads evenly: 0.5. The given
    ``attributions`` (of the sample alone) are not used. NaN: no positive relevance on the mosaic (Quantus adds
    1e-9 to the denominator and returns 0). Higher is better."""
    require_images(x, "focus")
    images, labels = check_pool(pool, x, "focus")
    fn = explainer(method, method_params, "focus")
    tiles, is_target = mosaic_plan(x, target, labels, seed)
    mosaics = build_mosaics(x, images, tiles, bool(full_size))
    rel = explain_stack(fn, model, mosaics.unsqueeze(0), target, batch_size)[0]
    r = rel.detach().double().sum(1).clamp(min=0)
    quad = quadrant_masks(tuple(r.shape[-2:]), is_target, bool(full_size), tuple(x.shape[-2:])).to(r.device)
    total = r.flatten(1).sum(1)
    inside = (r * quad).flatten(1).sum(1)
    value = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                        torch.full_like(total, float("nan")))
    return scalar_rows(value, "focus")
