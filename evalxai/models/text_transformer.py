"""A small transformer encoder for text classification (Vaswani et al. 2017; BERT's [CLS] classification, Devlin et
al. 2019): ``text_transformer``.

Token embedding (vocab, D), a learned positional embedding, ``depth`` pre-norm blocks (LayerNorm,
``nn.MultiheadAttention`` with the padding as ``key_padding_mask``, residual add, LayerNorm, GELU MLP, residual add),
a final LayerNorm and a linear head on the first position (``pool="cls"``, the default) or on the mean over the
tokens (``pool="mean"``). Every part is one the LRP engine has a rule for (AttnLRP / CP-LRP, as for ``vit_tiny``).

Why [CLS]: the first position is a token in every right-padded row, and the head reads one position, so the logits
of a sequence alone and in a padded batch are the same function of its tokens with no padding-dependent arithmetic in
the pooling; the mean would divide by a per-row token count.
"""
from __future__ import annotations

import torch
from torch import nn


class TextBlock(nn.Module):
    """Pre-norm encoder block: x + attn(LN(x)) with padded keys masked, then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TextTransformer(nn.Module):
    """``text_transformer``: ``depth`` blocks of width ``dim`` with ``heads`` heads and an MLP of ``mlp`` units on
    sequences of at most ``input_shape[0]`` tokens from a vocabulary of ``vocab_size`` (the dataset's tokenizer's;
    ``evalxai.models.get_model`` passes it and ``pad_id``).

    ``forward(input_ids=None, attention_mask=None, inputs_embeds=None)`` -> logits (N, num_classes); the attention
    mask (1 = token, 0 = padding) defaults to ``input_ids != pad_id``, or to all tokens when only embeddings are given.
    ``get_input_embeddings()`` is the token embedding, as for Hugging Face models.
    """

    modality = "text"

    def __init__(self, input_shape, num_classes: int = 2, vocab_size: int | None = None, pad_id: int = 0,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128, pool: str = "cls"):
        super().__init__()
        if vocab_size is None or int(vocab_size) < 1:
            raise ValueError(f"text_transformer needs vocab_size (got {vocab_size}): build it for a text dataset "
                             "(evalxai.models.get_model passes the tokenizer's) or pass vocab_size=")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool='{pool}' is unknown in text_transformer: use 'cls' or 'mean'")
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads} in text_transformer")
        self.max_length, self.pad_id, self.pool = int(input_shape[0]), int(pad_id), pool
        self.embed = nn.Embedding(int(vocab_size), dim)
        nn.init.normal_(self.embed.weight, std=0.02)  # BERT's initializer range, as the positions: with N(0, 1)
        # token embeddings the positions are drowned out and the distractor variant's "not <word>" is not learnt
        self.pos_embed = nn.Parameter(torch.randn(1, self.max_length, dim) * 0.02)
        self.blocks = nn.ModuleList([TextBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("text_transformer takes input_ids or inputs_embeds (one of them)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        t = x.shape[1]
        if t > self.max_length:
            raise ValueError(f"text_transformer: {t} tokens exceed its {self.max_length} positions (the dataset's "
                             "length it was built for): cut the sequences")
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id) if input_ids is not None \
                else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        padding = attention_mask == 0
        x = x + self.pos_embed[:, :t]
        for block in self.blocks:
            x = block(x, padding)
        x = self.norm(x)
        if self.pool == "cls":
            return self.head(x[:, 0])
        keep = (~padding).to(x.dtype).unsqueeze(-1)
        return self.head((x * keep).sum(1) / keep.sum(1))
