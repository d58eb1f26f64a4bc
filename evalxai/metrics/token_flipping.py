"""Token flipping: pixel flipping for text (Achtibat et al. 2024, "AttnLRP: attention-aware layer-wise relevance
propagation for transformers", ICML; Samek et al. 2017 for the curves and AOPC).

The real tokens of each sequence are removed in MoRF, LeRF or random order, ``per_step`` at a time, until none is
left: the word embedding of a removed token is replaced by a baseline's (``zero``: the zero embedding, AttnLRP's
protocol; ``pad`` / ``mask`` / ``unk``: that token's embedding), the attention mask unchanged, and the target's score
y_k (logit, softmax or log-softmax) is recorded after k steps (y_0: the text as it is). A sequence of L real tokens
has K = ceil(L / p) steps (p = ``per_step`` tokens, or ceil(``per_step`` L) for a fraction in (0, 1)), so its curve
is its own whatever the padding of the batch. Scalars per sequence:

    AOPC_o = 1 / (K + 1) sum_{k=0..K} (y_0 - y_{o,k}),    ABPC = 1 / (K + 1) sum_{k=0..K} (y_{lerf,k} - y_{morf,k}),

(AttnLRP's area between the LeRF and MoRF curves, per step) and the normalised AUC of y over the removed fraction
min(k p, L) / L. Ties in relevance are broken at random per sequence (seeded by its tokens).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from evalxai.metrics.common import UNSET, check_score_space
from evalxai.metrics.faithfulness import DIRECTIONS
from evalxai.metrics.registry import Passes, register_metric
from evalxai.metrics.tokens import baseline_embedding, perturbed_scores, token_counts, token_ranks
from evalxai.models.text import EmbeddingsInput, text_model


def tokens_per_step(per_step: int | float, lengths: torch.Tensor) -> torch.Tensor:
    """Tokens removed per step (N,): ``per_step`` tokens (an int >= 1) or ceil(``per_step`` L) of L real tokens (a
    fraction in (0, 1)), at least 1."""
    if isinstance(per_step, bool) or not isinstance(per_step, (int, float)) or per_step <= 0 or \
            (per_step >= 1 and per_step != int(per_step)):
        raise ValueError(f"per_step={per_step!r} of metric 'token_flipping' must be a token count >= 1 or a fraction "
                         "of the sequence in (0, 1)")
    if per_step >= 1:
        return torch.full_like(lengths, int(per_step))
    return torch.ceil(per_step * lengths.double()).long().clamp(min=1)


def _orders(order: str | tuple[str, ...] | list[str]) -> list[str]:
    return [order] if isinstance(order, str) else list(order)


def _cost(model: nn.Module, x: torch.Tensor, p: dict) -> Passes:
    """K + 1 forwards per order for a sequence of T real tokens (the most a row of x can hold)."""
    t = x.shape[1]
    k = math.ceil(t / int(tokens_per_step(p["per_step"], torch.tensor([t]))[0]))
    return Passes(len(_orders(p["order"])) * (k + 1), 0)


@register_metric("token_flipping", family="faithfulness", directions=DIRECTIONS, cost=_cost, inputs=("tokens",))
def token_flipping(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, order: str | tuple[str, ...] = ("morf", "lerf"),
                   per_step: int | float = 1, baseline: str = "zero", score_space: str = "logit", seed: int = 0,
                   batch_size: int | None = None, pad_id: int | None = None, mask_id: int | None = None,
                   unk_id: int | None = None) -> pd.DataFrame:
    """Token flipping (AttnLRP's protocol, Achtibat et al. 2024): MoRF / LeRF / random curves removing tokens, AOPC
    per order, ABPC and normalised AUC (module docstring).

    x: token ids (N, T); attributions (N, T); attention_mask (N, T), 1 = token. ``baseline``: ``zero`` (AttnLRP),
    ``pad``, ``mask`` or ``unk`` (the ids ``pad_id`` / ``mask_id`` / ``unk_id``, else the model config's)."""
    check_score_space(score_space)
    orders = _orders(order)
    inner = text_model(model)
    mask = torch.ones_like(x) if attention_mask is None else attention_mask
    base = baseline_embedding(model, baseline, {"pad": pad_id, "mask": mask_id, "unk": unk_id}, "token_flipping")
    embeds = EmbeddingsInput(inner).embed(x)
    lengths = token_counts(mask)
    p = tokens_per_step(per_step, lengths)
    k_max = torch.ceil(lengths.double() / p).long()  # K per sequence
    sample = torch.repeat_interleave(torch.arange(len(x), device=x.device), k_max + 1)
    start = torch.cumsum(k_max + 1, 0) - (k_max + 1)
    k = torch.arange(len(sample), device=x.device) - start[sample]  # step of each copy
    count = torch.minimum(k * p[sample], lengths[sample])  # tokens removed in each copy
    frac = (count.double() / lengths[sample].double()).cpu().numpy()
    frames, curves = [], {}
    for o in orders:
        ranks = token_ranks(attributions, mask, o, x, seed)
        removed = ranks[sample] < count.unsqueeze(1)
        y = perturbed_scores(model, embeds, mask, target, sample, removed, base, score_space, batch_size=batch_size,
                             what=f"token flipping ({o})").double().cpu().numpy()
        curves[o] = y
        frames.append(pd.DataFrame({"sample": sample.cpu().numpy(), "step": k.cpu().numpy(), "fraction": frac,
                                    "value": y, "measure": f"curve_{o}", "direction": UNSET, "order": o}))
    bounds = np.r_[0, np.cumsum((k_max + 1).cpu().numpy())]
    segments = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    for o, y in curves.items():
        aopc = [float(np.mean(y[s][0] - y[s])) for s in segments]
        auc = [float(np.trapezoid(y[s], frac[s]) / (frac[s][-1] - frac[s][0])) for s in segments]
        frames += [_scalars(aopc, f"aopc_{o}", o), _scalars(auc, f"auc_{o}", o)]
    if "morf" in curves and "lerf" in curves:
        frames.append(_scalars([float(np.mean(curves["lerf"][s] - curves["morf"][s])) for s in segments], "abpc",
                               "lerf-morf"))
    out = pd.concat(frames, ignore_index=True)
    out["score_space"] = score_space
    out["baseline"] = baseline
    out["per_step"] = per_step
    return out


def _scalars(values: list[float], measure: str, order: str) -> pd.DataFrame:
    return pd.DataFrame({"sample": np.arange(len(values)), "measure": measure, "value": np.asarray(values, float),
                         "direction": UNSET, "order": order})
