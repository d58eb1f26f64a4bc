"""Token ids of text classifiers: which metrics score them, and how a token is removed.

A text classifier is scored on its integer ``input_ids`` (N, T) with an ``attention_mask`` (N, T) (1 = token, 0 =
padding) and maps (N, T), one relevance per token (``evalxai.score`` on integer inputs: ``evalxai.api.score_tokens``).
Padding is never a feature: it is never removed, ranked or counted in a denominator, so a sequence alone and in a
right-padded batch give the same rows.

- Token metrics (``token_flipping``, ``comprehensiveness``, ``eraser_sufficiency``) perturb the text: a removed
  token's word embedding is replaced by a baseline's (``removed_embeddings``: the embedding of the pad / [MASK] / UNK
  token, or the zero embedding of AttnLRP's protocol), or the token is deleted (the rest shifts left and is
  re-padded), and the model is run on the embeddings through ``evalxai.models.EmbeddingsInput``
  (``perturbed_scores``: the perturbed copies of all samples stacked and forwarded in chunks of the memory budget).
- Metrics that read the map (and masks) alone (localisation against rationale masks, complexity) score each
  sequence's real tokens as a 1 x L map of one channel (``TOKEN_MAPS``, declared with ``accept_tokens``).
- The rest have no meaning for token ids (they translate, segment, inpaint or compose images, or perturb float
  inputs and re-explain them; embedding perturbations are not implemented): ``why_not_tokens`` says why, and
  ``evalxai.score`` refuses them in one line.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from evalxai.core.memory import chunked, images_per_chunk
from evalxai.core.scoring import target_scores
from evalxai.core.seeding import sample_generators
from evalxai.metrics import complexity, localisation  # noqa: F401  (registered before they are declared here)
from evalxai.metrics.registry import accept_tokens
from evalxai.models.text import EmbeddingsInput, text_model

TOKEN_MAPS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection", "localisation_auc",
              "pointing_game", "attribution_localisation", "energy_pointing_game", "sparseness", "complexity",
              "effective_complexity")
accept_tokens(*TOKEN_MAPS)

TEXT_METRICS = ("token_flipping, comprehensiveness, eraser_sufficiency (faithfulness); relevance_mass_accuracy, "
                "relevance_rank_accuracy, token_f1, token_iou, auprc (against rationale masks); sparseness, complexity")
WHY_NOT = {
    "continuity": "it translates images",
    "focus": "it composes image mosaics",
    "road": "it inpaints images",
    "irof": "it segments images into superpixels",
    "xai_tris_precision": "it pools |R| over image channels for XAI-TRIS's image tasks",
    "xai_tris_emd": "its earth mover's distance runs over the pixel grid",
    "sufficiency": "it is Dasgupta et al.'s sufficiency (noisy copies of float inputs, re-explained); ERASER's "
                   "sufficiency for token ids is eraser_sufficiency",
}
BY_FAMILY = {
    "faithfulness": "it removes or perturbs pixels and patches of float inputs",
    "robustness": "it perturbs float inputs and re-explains them (perturbing word embeddings is not implemented)",
    "randomisation": "it re-explains with randomised layers (not implemented for token ids)",
    "axiomatic": "it compares the map with the model on float inputs and references (not implemented for token ids)",
}


def why_not_tokens(name: str, family: str) -> str:
    """The one-line reason metric ``name`` does not score token ids, and what to use instead."""
    why = WHY_NOT.get(name, BY_FAMILY.get(family, "it is written for float inputs"))
    return f"metric '{name}' does not score token ids: {why}; for text use {TEXT_METRICS}"


BASELINES = ("pad", "mask", "unk", "zero")


def baseline_embedding(model: nn.Module, baseline: str, ids: dict[str, int | None], metric: str) -> torch.Tensor:
    """The word embedding (D,) that replaces a removed token: zeros, or the embedding of the pad / [MASK] / UNK token
    (its id from ``ids`` = {"pad": pad_id, ...}, else the model's own: ``EmbeddingsInput.token_embedding``, the
    lookup the methods use)."""
    if baseline not in BASELINES:
        raise ValueError(f"metric '{metric}': baseline={baseline!r} is not one of {list(BASELINES)}")
    wrapped = EmbeddingsInput(text_model(model))
    weight = wrapped.model.get_input_embeddings().weight
    if baseline == "zero":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return wrapped.token_embedding(baseline, ids.get(baseline), f"metric '{metric}'")


def tie_orders(input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, T) positions: each sequence's real tokens in a random order (seeded by ``seed`` and the sequence's real
    token ids alone, so padding changes nothing), then its padding positions."""
    real = attention_mask.bool()
    key = (input_ids * real).double()  # padding reads 0 whatever its id: the seed of a sequence is its tokens'
    out = torch.empty_like(input_ids)
    for n, g in enumerate(sample_generators(key, seed)):
        pos = torch.nonzero(real[n]).flatten()
        pad = torch.nonzero(~real[n]).flatten()
        out[n] = torch.cat([pos[torch.randperm(len(pos), generator=g).to(pos.device)], pad])
    return out


def token_ranks(attributions: torch.Tensor, attention_mask: torch.Tensor, order: str, input_ids: torch.Tensor,
                seed: int) -> torch.Tensor:
    """rank[n, t] = place of token t in the removal order of sequence n (0 = first): ``morf`` (most relevant first),
    ``lerf`` (least first) or ``random``; ties in the order of ``tie_orders``; padding ranks last (T and above)."""
    if order not in ("morf", "lerf", "random"):
        raise ValueError(f"unknown order '{order}': use one of ['morf', 'lerf', 'random']")
    perm = tie_orders(input_ids, attention_mask, seed).to(attributions.device)
    r = attributions.double()
    key = {"morf": -r, "lerf": r, "random": torch.zeros_like(r)}[order]
    key = torch.where(attention_mask.bool(), key, torch.full_like(key, math.inf)).gather(1, perm)
    idx = perm.gather(1, torch.sort(key, dim=1, stable=True).indices)
    rank = torch.empty_like(idx)
    return rank.scatter_(1, idx, torch.arange(idx.shape[1], device=idx.device).expand_as(idx).contiguous())


def removed_embeddings(embeds: torch.Tensor, mask: torch.Tensor, removed: torch.Tensor, base: torch.Tensor,
                       delete: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (R, T, D) and attention masks (R, T) with the ``removed`` tokens (R, T) bool taken out of ``embeds``
    (R, T, D) / ``mask`` (R, T): replaced by ``base`` (D,) (the mask unchanged), or deleted (``delete``: the kept
    tokens shift left in their order, the rest is padding with zero embeddings; a sequence left empty is one
    ``base`` token, as a model cannot read an empty one)."""
    if not delete:
        return torch.where(removed.unsqueeze(-1), base, embeds), mask
    keep = mask.bool() & ~removed
    idx = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    count = keep.sum(1, keepdim=True)
    new_mask = (torch.arange(mask.shape[1], device=mask.device) < count).to(mask.dtype)
    out = embeds.gather(1, idx.unsqueeze(-1).expand_as(embeds)) * new_mask.unsqueeze(-1).to(embeds.dtype)
    empty = count.squeeze(1) == 0
    out[empty, 0] = base
    new_mask[empty, 0] = 1
    return out, new_mask


@torch.no_grad()
def perturbed_scores(model: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor, target: torch.Tensor,
                     sample: torch.Tensor, removed: torch.Tensor, base: torch.Tensor, space: str, delete: bool = False,
                     batch_size: int | None = None, what: str = "token metric") -> torch.Tensor:
    """Target scores (R,) of R perturbed copies: copy i is sample ``sample[i]`` of ``embeds`` (N, T, D) /
    ``attention_mask`` (N, T) with tokens ``removed[i]`` (T,) taken out (``removed_embeddings``), in ``space``
    (logit, softmax, log_softmax). Copies are built and forwarded a chunk at a time (the memory budget for
    forwards of one sequence; ``batch_size``: at most that many)."""
    inner = text_model(model)
    step = images_per_chunk(EmbeddingsInput(inner, attention_mask[:1]), embeds[:1], "forward", batch_size, what)
    out = []
    for i in chunked(len(sample), step, what):
        s = sample[i:i + step]
        e, m = removed_embeddings(embeds[s], attention_mask[s], removed[i:i + step], base, delete)
        out.append(target_scores(EmbeddingsInput(inner, m)(e), target[s], space))
    return torch.cat(out) if out else embeds.new_zeros(0)


def token_counts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens per sequence (N,) int64."""
    return attention_mask.bool().sum(1)
