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

import torch
from torch import fx, nn


def text_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``LogitsOnly`` (a ``.model`` attribute with input embeddings), else ``model``."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and not hasattr(model, "get_input_embeddings") \
            and hasattr(inner, "get_input_embeddings"):
        return inner
    return model


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
    where ``last_token_head`` says so). ``EmbeddingsInput(m).model`` is ``m`` (``LogitsOnly`` unwrapped)."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor | None = None, pooling: str | None = None):
        super().__init__()
        self.model = text_model(model)
        self.attention_mask = attention_mask
        self.pooling = pooling or ("last" if last_token_head(self.model) else "model")
        self.last = None if attention_mask is None else last_positions(attention_mask)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word embeddings of ``input_ids`` (N, T, D), detached."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(input_ids).detach()

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        mask, last = self.attention_mask, self.last
        if mask is not None and mask.shape[0] == 1 and inputs_embeds.shape[0] != 1:  # one mask for every row
            mask, last = mask.expand(inputs_embeds.shape[0], -1), last.expand(inputs_embeds.shape[0])
        if self.pooling == "last":
            out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=mask)
            logits = self.model.score(out[0])
            n, t = logits.shape[0], logits.shape[1]
            last = torch.full((n,), t - 1, device=logits.device) if last is None else last
            return logits[torch.arange(n, device=logits.device), last]
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=mask)
        if hasattr(self.model, "config"):  # a Hugging Face model: an output object
            return out.logits
        return out if isinstance(out, (torch.Tensor, fx.Proxy)) else out.logits  # a proxy while traced
