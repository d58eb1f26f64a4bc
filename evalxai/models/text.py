"""Text classifiers as functions of their word embeddings: ``EmbeddingsInput``.

Token ids are integers: no gradient or relevance reaches them. ``EmbeddingsInput(model, attention_mask)`` is the
model as a function of the word embeddings e (N, T, D) = ``model.get_input_embeddings()(input_ids)`` to logits
(N, classes), so every method (LRP, gradients, integrated gradients) explains e unchanged; ``evalxai.explain`` on
integer input ids builds it (``evalxai.api.explain_tokens``).

What the model must offer: ``get_input_embeddings()`` (the word-embedding layer) and a forward taking
``inputs_embeds=`` and ``attention_mask=`` (1 = token, 0 = padding) that returns logits or an output object with
``.logits``, as Hugging Face's ``*ForSequenceClassification`` models do. Those that classify from the last token
(GPT-2, Llama and the other ``GenericForSequenceClassification`` models: a ``score`` head on the base model's hidden
states) find that token from ``input_ids`` and fall back to the last position when given embeddings; here their
logits are taken at the last non-padding token of ``attention_mask`` (the base model, the ``score`` head, then that
position), so a padded batch gives each sequence the logits it has alone.
"""
from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch
from torch import fx, nn

TOKEN_BASELINES = ("zero", "pad", "mask", "unk")


def text_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``LogitsOnly`` (a ``.model`` attribute with input embeddings), else ``model``."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and not hasattr(model, "get_input_embeddings") \
            and hasattr(inner, "get_input_embeddings"):
        return inner
    return model


def mask_groups(attention_mask: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(mask (T,), the rows (n,) that have it) for every distinct row of ``attention_mask`` (N, T): the groups of
    one length, when right-padded, in which token ids are explained and their maps scored."""
    masks, group = torch.unique(attention_mask, dim=0, return_inverse=True)
    for g, mask in enumerate(masks):
        yield mask, torch.nonzero(group == g).flatten()


def token_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """What a text classifier gives for token ids with their attention mask, as runs call it
    (``model(input_ids=, attention_mask=)``): its logits, a Hugging Face output object read through ``.logits``."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return getattr(out, "logits", out)


def last_token_head(model: nn.Module) -> bool:
    """Whether the model classifies from the last token: a ``score`` linear head on its base model (Hugging Face's
    GPT-2 / Llama / generic sequence classifiers)."""
    base = getattr(model, "base_model", model)
    return isinstance(getattr(model, "score", None), nn.Linear) and base is not model


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The index of the last token (mask 1) of each row, as Hugging Face finds the last non-padding token."""
    t = attention_mask.shape[1]
    return (torch.arange(t, device=attention_mask.device) * (attention_mask != 0)).argmax(-1)


class EmbeddingsInput(nn.Module):
    """``model`` as a function of its word embeddings e (N, T, D) to logits (N, classes), for one ``attention_mask``
    (N, T) (None: every position is a token; one row (1, T): the mask of every row of e, as the methods that stack
    perturbed copies of a sample need). ``pooling``: ``"last"`` (the ``score`` head at the last token of the
    mask: GPT-2, Llama), ``"model"`` (the model's own logits, e.g. BERT's first-token pooler) or None (``"last"``
    where ``last_token_head`` says so). ``EmbeddingsInput(m).model`` is ``m`` (``LogitsOnly`` unwrapped).

    The mask is an input of the traced graph, not a constant: ``masked(mask)`` swaps it, and the methods that trace
    (LRP, attention rollout) reuse one graph per input shape for every mask (``evalxai.api.explain_tokens``)."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor | None = None, pooling: str | None = None):
        super().__init__()
        self.model = text_model(model)
        self.attention_mask = attention_mask
        self.pooling = pooling or ("last" if last_token_head(self.model) else "model")

    @property
    def last(self) -> torch.Tensor | None:
        """The position of each mask row's last token (None without a mask)."""
        return None if self.attention_mask is None else last_positions(self.attention_mask)

    @contextlib.contextmanager
    def masked(self, attention_mask: torch.Tensor | None) -> Iterator[EmbeddingsInput]:
        """The wrapper with ``attention_mask`` for the duration of the block (the previous one restored after); keep
        the masks of one wrapper one shape, as a trace is specialised to the shapes it saw."""
        saved, self.attention_mask = self.attention_mask, attention_mask
        try:
            yield self
        finally:
            self.attention_mask = saved

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word embeddings of ``input_ids`` (N, T, D), detached."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(input_ids).detach()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T) bool, True at the real tokens of the embeddings x (N, T, D): the mask's rows (one row: for every
        sample), all True without a mask."""
        n, t = x.shape[:2]
        if self.attention_mask is None:
            return torch.ones(n, t, dtype=torch.bool, device=x.device)
        mask = self.attention_mask.to(x.device) != 0
        if mask.shape[1] != t or mask.shape[0] not in (1, n):
            raise ValueError(f"EmbeddingsInput: attention_mask {tuple(mask.shape)} does not fit embeddings "
                             f"{tuple(x.shape)}: give one mask row for all samples or one per sample")
        return mask.expand(n, t)

    def token_embedding(self, which: str, token_id: int | None, what: str) -> torch.Tensor:
        """The word embedding (D,) of the ``which`` token (``pad``, ``mask`` or ``unk``): ``token_id``, else the
        model's ``config.<which>_token_id`` (Hugging Face) or ``<which>_id`` attribute (``text_transformer``'s
        ``pad_id``); ``what`` (the method) names the caller in errors."""
        weight = self.model.get_input_embeddings().weight
        config = getattr(self.model, "config", None)
        if token_id is not None:
            try:
                if isinstance(token_id, bool):
                    raise TypeError
                token_id = operator.index(token_id)  # an int, a numpy integer or a 0-d integer tensor
            except TypeError:
                raise ValueError(f"{what}: {which}_id={token_id!r} is not a token id: give an int") from None
        for found in (token_id, getattr(config, f"{which}_token_id", None), getattr(self.model, f"{which}_id", None)):
            if isinstance(found, int) and not isinstance(found, bool):
                token_id = found
                break
        else:
            raise ValueError(f"{what}: baseline='{which}' needs the {which} token's id, and {type(self.model).__name__}"
                             f" names none: pass {which}_id=<the tokenizer's {which}_token_id>, or use baseline='zero'")
        if not 0 <= token_id < weight.shape[0]:
            raise ValueError(f"{what}: {which}_id={token_id} is outside the vocabulary [0, {weight.shape[0] - 1}]: "
                             "give the id of the model's own tokenizer")
        return self.embed(torch.tensor([token_id], device=weight.device))[0]

    def reference(self, x: torch.Tensor, baseline: str | float | torch.Tensor, what: str, pad_id: int | None = None,
                  mask_id: int | None = None, unk_id: int | None = None) -> torch.Tensor:
        """The reference embeddings of x (N, T, D) for ``baseline`` (``TOKEN_BASELINES``): the zero embedding, or the
        pad / [MASK] / UNK token's embedding (``token_embedding``), at every real token; a number or a tensor
        broadcastable to x. Padding positions keep x: they are never removed."""
        if isinstance(baseline, torch.Tensor):
            ref = baseline.to(x).expand_as(x)
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            ref = torch.full_like(x, float(baseline))
        elif baseline == "zero":
            ref = torch.zeros_like(x)
        elif baseline in TOKEN_BASELINES:
            ids = {"pad": pad_id, "mask": mask_id, "unk": unk_id}
            ref = self.token_embedding(baseline, ids[baseline], what).to(x).expand_as(x)
        else:
            raise ValueError(f"{what}: baseline={baseline!r} is not one of {list(TOKEN_BASELINES)} (token ids), a "
                             "number or a tensor")
        return torch.where(self.tokens(x).unsqueeze(-1), ref, x)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask
        if mask is not None:
            # the mask plus a zero made from the input's metadata: a traced value read from the wrapper's attribute
            # at every run, not a constant of the trace, so one traced graph serves every mask of its shape
            mask = mask + inputs_embeds.new_zeros((), dtype=mask.dtype)
            if mask.shape[0] == 1 and inputs_embeds.shape[0] != 1:  # one mask for every row
                mask = mask.expand(inputs_embeds.shape[0], -1)
        if self.pooling == "last":
            out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=mask)
            logits = self.model.score(out[0])
            n, t = logits.shape[0], logits.shape[1]
            last = torch.full((n,), t - 1, device=logits.device) if mask is None else last_positions(mask)
            return logits[torch.arange(n, device=logits.device), last]
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=mask)
        if hasattr(self.model, "config"):  # a Hugging Face model: an output object
            return out.logits
        return out if isinstance(out, (torch.Tensor, fx.Proxy)) else out.logits  # a proxy while traced
