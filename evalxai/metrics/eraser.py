"""ERASER's faithfulness scores for token maps: comprehensiveness and sufficiency (DeYoung et al. 2020, "ERASER: a
benchmark to evaluate rationalized NLP models", ACL).

For a sequence x of L real tokens, the target y and a bin b (a fraction of the real tokens), r_b is its top-k_b
tokens by relevance, k_b = max(1, ceil(b L)) (ties broken at random per sequence, seeded by its tokens), and p(y|.)
the softmax probability of the target:

    comprehensiveness = 1 / |B| sum_{b in B} [ p(y|x) - p(y|x without r_b) ]     (higher is better)
    sufficiency       = 1 / |B| sum_{b in B} [ p(y|x) - p(y|r_b only) ]           (lower is better)

with B = ``bins``, [0.01, 0.05, 0.1, 0.2, 0.5] by default (ERASER's "AOPC" over these bins; ferret's default is 0.1 to
1.0 in steps of 0.1, so numbers differ by library: the bins are recorded in the table). Removal: ``replace`` (the
default) replaces a removed token's word embedding by the ``baseline``: zero (the default, as token flipping; every
model has it) or the pad / [MASK] / UNK token's embedding, keeping the sequence's length and positions; ``delete``
deletes it, as ERASER does (the kept tokens shift left and are re-padded; a sequence left empty is one baseline
token). Rows: one per bin (measure ``*_bin``, step = the bin's
index from 1, ``fraction`` = the bin, ``k`` = tokens in r_b; no direction) and the aggregate per sequence.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.metrics.common import UNSET
from evalxai.metrics.registry import Passes, register_metric
from evalxai.metrics.tokens import baseline_embedding, perturbed_scores, token_counts, token_ranks
from evalxai.models.text import EmbeddingsInput, text_model

DEFAULT_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
REMOVALS = ("replace", "delete")


def _check_bins(bins: Sequence[float], metric: str) -> list[float]:
    bins = [bins] if isinstance(bins, (int, float)) else list(bins)
    if not bins or any(isinstance(b, bool) or not 0 < b <= 1 for b in bins):
        raise ValueError(f"bins={bins!r} of metric '{metric}' must be fractions of the real tokens in (0, 1], e.g. "
                         f"{list(DEFAULT_BINS)}")
    return [float(b) for b in bins]


def eraser_curve(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                 attention_mask: torch.Tensor | None, keep_top: bool, bins: Sequence[float], removal: str,
                 baseline: str, seed: int, batch_size: int | None, ids: dict, metric: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p(y|x) - p(y|x') per sequence and bin (N, B), k (N, B), p(y|x) (N,)): x' = x without its top-k tokens, or
    (``keep_top``) with only them."""
    bins = _check_bins(bins, metric)
    if removal not in REMOVALS:
        raise ValueError(f"removal={removal!r} of metric '{metric}' is not one of {list(REMOVALS)}")
    inner = text_model(model)
    mask = torch.ones_like(x) if attention_mask is None else attention_mask
    base = baseline_embedding(model, baseline, ids, metric)
    embeds = EmbeddingsInput(inner).embed(x)
    lengths = token_counts(mask)
    n, nb = len(x), len(bins)
    k = torch.stack([torch.ceil(b * lengths.double() - 1e-9).long().clamp(min=1) for b in bins], 1)  # (N, B)
    ranks = token_ranks(attributions, mask, "morf", x, seed)
    sample = torch.arange(n, device=x.device).repeat_interleave(nb + 1)
    kk = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=x.device), k], 1).reshape(-1)  # copy 0: x itself
    top = ranks[sample] < kk.unsqueeze(1)
    real = mask.bool()[sample]
    removed = (real & ~top) if keep_top else top
    removed[torch.arange(len(sample), device=x.device) % (nb + 1) == 0] = False
    p = perturbed_scores(model, embeds, mask, target, sample, removed, base, "softmax", removal == "delete",
                         batch_size, what=metric).double().view(n, nb + 1).cpu().numpy()
    return p[:, :1] - p[:, 1:], k.cpu().numpy(), p[:, 0]


def eraser_rows(drop: np.ndarray, k: np.ndarray, bins: Sequence[float], measure: str) -> pd.DataFrame:
    """Rows per bin (``<measure>_bin``, step = bin index from 1) and the mean over bins (``measure``)."""
    n, nb = drop.shape
    per_bin = pd.DataFrame({"sample": np.repeat(np.arange(n), nb), "step": np.tile(np.arange(1, nb + 1), n),
                            "fraction": np.tile(np.asarray(bins, float), n), "k": k.reshape(-1),
                            "value": drop.reshape(-1), "measure": f"{measure}_bin", "direction": UNSET})
    total = pd.DataFrame({"sample": np.arange(n), "measure": measure, "value": drop.mean(1), "direction": UNSET})
    return pd.concat([per_bin, total], ignore_index=True)


def _cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    bins = p["bins"]
    return Passes((1 if isinstance(bins, (int, float)) else len(bins)) + 1, 0)


def _run(model, x, target, attributions, attention_mask, keep_top, bins, removal, baseline, seed, batch_size,
         pad_id, mask_id, unk_id, metric, measure) -> pd.DataFrame:
    bins = _check_bins(bins, metric)
    drop, k, _ = eraser_curve(model, x, target, attributions, attention_mask, keep_top, bins, removal, baseline,
                              seed, batch_size, {"pad": pad_id, "mask": mask_id, "unk": unk_id}, metric)
    out = eraser_rows(drop, k, bins, measure)
    out["removal"] = removal
    out["baseline"] = baseline
    return out


@register_metric("comprehensiveness", family="faithfulness", cost=_cost, inputs=("tokens",),
                 directions={"comprehensiveness": "higher", "comprehensiveness_bin": "none"})
def comprehensiveness(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, bins: Sequence[float] = DEFAULT_BINS,
                      removal: str = "replace", baseline: str = "zero", seed: int = 0, batch_size: int | None = None,
                      pad_id: int | None = None, mask_id: int | None = None,
                      unk_id: int | None = None) -> pd.DataFrame:
    """ERASER comprehensiveness (DeYoung et al. 2020): mean over bins b of p(y|x) - p(y|x without its top-ceil(b L)
    tokens); higher = the map's top tokens carry the prediction (module docstring)."""
    return _run(model, x, target, attributions, attention_mask, False, bins, removal, baseline, seed, batch_size,
                pad_id, mask_id, unk_id, "comprehensiveness", "comprehensiveness")


@register_metric("eraser_sufficiency", family="faithfulness", cost=_cost, inputs=("tokens",),
                 directions={"sufficiency": "lower", "sufficiency_bin": "none"})
def eraser_sufficiency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, bins: Sequence[float] = DEFAULT_BINS,
                       removal: str = "replace", baseline: str = "zero", seed: int = 0, batch_size: int | None = None,
                       pad_id: int | None = None, mask_id: int | None = None,
                       unk_id: int | None = None) -> pd.DataFrame:
    """ERASER sufficiency (DeYoung et al. 2020): mean over bins b of p(y|x) - p(y|only its top-ceil(b L) tokens);
    lower = the map's top tokens suffice (module docstring; ``sufficiency`` is Dasgupta et al.'s, for float inputs)."""
    return _run(model, x, target, attributions, attention_mask, True, bins, removal, baseline, seed, batch_size,
                pad_id, mask_id, unk_id, "eraser_sufficiency", "sufficiency")

