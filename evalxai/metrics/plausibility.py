"""Plausibility: does the map pick the tokens (or pixels) of the ground-truth rationale? Scores against masks.

- ``token_f1`` / ``token_iou`` (ERASER, DeYoung et al. 2020; ferret, Attanasio et al. 2023): the map's predicted
  rationale is its top-k tokens, k = the number of rationale tokens |G| (``k`` None; then F1 = precision = recall)
  or a given count / fraction of the real tokens; token-level F1 = 2 |P ∩ G| / (|P| + |G|) and IOU = |P ∩ G| /
  |P ∪ G| of that set P against the rationale G. ERASER's IOU-F1 matches spans at IOU > 0.5; this is the
  token-level IOU of the one predicted set.
- ``auprc``: area under the precision-recall curve of the relevance scores against the mask (average precision,
  as sklearn's ``average_precision_score``; ERASER's soft-score plausibility), for token maps and images.

Ties at the k-th value are counted by their expected score over every order of the tied tokens (exact, from the
hypergeometric law of the tied tokens that fall in G), so a constant map scores chance level whatever the token
order. Token maps arrive as each sequence's real tokens, a 1 x L map of one channel (``evalxai.api.score_tokens``):
padding is never in P, G or a denominator. NaN: an empty rationale.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from evalxai.core.sorting import sort_rows
from evalxai.core.validate import check_masks
from evalxai.metrics.common import scalar_rows
from evalxai.metrics.localisation import above_and_tied, channel_sum
from evalxai.metrics.registry import no_passes, register_metric


def top_k_size(k: int | float | None, size: torch.Tensor, length: int, metric: str) -> torch.Tensor:
    """k per sample (N,): |G| (``k`` None), a count (an int >= 1, at most ``length``) or ceil(k L) (a fraction)."""
    if k is None:
        return size.clamp(min=1)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0 or (k >= 1 and k != int(k)):
        raise ValueError(f"k={k!r} of metric '{metric}' must be null (the rationale's size), a token count >= 1 or a "
                         "fraction in (0, 1)")
    kk = min(int(k), length) if k >= 1 else max(1, -int(-k * length // 1))
    return torch.full_like(size, kk)


def _log_choose(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def hit_distribution(r: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits (N, P + 1), probability (N, P + 1)): the law of |top-k(r) ∩ m| per row when ties at the k-th value are
    broken uniformly at random. The tokens above the k-th value all count; of the T tied ones, of which T_in lie in
    m, the still = k - #above picked hold h in m with the hypergeometric probability C(T_in, h) C(T - T_in, still - h)
    / C(T, still)."""
    n, p = r.shape
    above, tied = above_and_tied(r, k)
    base = (above & m).sum(1).double()
    still = (k - above.sum(1)).double().clamp(min=0)
    t = tied.sum(1).double()
    t_in = (tied & m).sum(1).double()
    h = torch.arange(p + 1, dtype=torch.float64, device=r.device).expand(n, p + 1)
    ok = (h <= t_in[:, None]) & (still[:, None] - h <= (t - t_in)[:, None]) & (h <= still[:, None])
    hc = torch.where(ok, h, torch.zeros_like(h))
    logp = (_log_choose(t_in[:, None], hc) + _log_choose((t - t_in)[:, None], still[:, None] - hc)
            - _log_choose(t[:, None], still[:, None]))
    prob = torch.where(ok, logp.exp(), torch.zeros_like(logp))
    return base[:, None] + h, prob


def _token_scores(x, attributions, masks, k, metric):
    m = check_masks(masks, x, metric, numbers=True).flatten(1)
    r = channel_sum(attributions).flatten(1)
    size = m.sum(1)
    kk = top_k_size(k, size, r.shape[1], metric)
    hits, prob = hit_distribution(r, m, kk)
    return hits, prob, kk.double(), size.double()


@register_metric("token_f1", family="localisation", cost=no_passes, directions={"f1": "higher"}, needs=("masks",),
                 inputs=("tokens",))
def token_f1(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
             masks: torch.Tensor | None = None, k: int | float | None = None) -> pd.DataFrame:
    """Token-level F1 of the map's top-k tokens against the rationale (ERASER; ferret's token F1): 2 |P ∩ G| / (k +
    |G|), k = |G| unless given (module docstring). NaN: empty rationale. Higher is better."""
    hits, prob, kk, size = _token_scores(x, attributions, masks, k, "token_f1")
    f1 = 2 * (hits * prob).sum(1) / (kk + size)
    return scalar_rows(torch.where(size > 0, f1, torch.full_like(f1, float("nan"))), "f1", k=k)


@register_metric("token_iou", family="localisation", cost=no_passes, directions={"iou": "higher"},
                 needs=("masks",), inputs=("tokens",))
def token_iou(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
              masks: torch.Tensor | None = None, k: int | float | None = None) -> pd.DataFrame:
    """Token-level IOU of the map's top-k tokens against the rationale: |P ∩ G| / (k + |G| - |P ∩ G|), k = |G| unless
    given; its expectation over tied tokens (module docstring). NaN: empty rationale. Higher is better."""
    hits, prob, kk, size = _token_scores(x, attributions, masks, k, "token_iou")
    union = (kk + size)[:, None] - hits
    iou = (prob * hits / union.clamp(min=1)).sum(1)
    return scalar_rows(torch.where(size > 0, iou, torch.full_like(iou, float("nan"))), "iou", k=k)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision per row of scores (N, P) against bool labels (N, P), as sklearn's average_precision_score:
    AP = sum over the distinct thresholds t (high to low) of (R_t - R_t') P_t, i.e. 1 / |G| times the sum over the
    positives of the precision at their score's threshold (tied scores enter together). NaN: no positive."""
    n, p = scores.shape
    srt, order = sort_rows(scores.double(), descending=True)
    lab = labels.gather(1, order).double()
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    group = new.long().cumsum(1) - 1
    pos = torch.arange(p, device=scores.device).expand(n, p)
    end = torch.zeros(n, p, dtype=torch.long, device=scores.device).scatter_reduce(1, group, pos, "amax")
    tp = lab.cumsum(1)
    precision = tp.gather(1, end) / (end + 1).double()  # at each group's last position
    g = lab.sum(1)
    ap = (lab * precision.gather(1, group)).sum(1) / g.clamp(min=1)
    return torch.where(g > 0, ap, torch.full_like(ap, float("nan")))


@register_metric("auprc", family="localisation", cost=no_passes, directions={"auprc": "higher"},
                 needs=("masks",), inputs=("float", "tokens"))
def auprc(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
          masks: torch.Tensor | None = None) -> pd.DataFrame:
    """Area under the precision-recall curve of sum_c R_c against the mask (average precision; ERASER's AUPRC of
    soft token scores): 1 for a map that ranks every mask element first, |G| / P for a constant map. NaN: empty
    mask. Higher is better."""
    m = check_masks(masks, x, "auprc", numbers=True)
    return scalar_rows(average_precision(channel_sum(attributions).flatten(1), m.flatten(1)), "auprc")
