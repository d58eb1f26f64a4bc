"""A small vision transformer (Dosovitskiy et al. 2021) for 28 x 28 images: ``vit_tiny``.

Patch embedding by a strided convolution, a class token (``expand`` + ``torch.cat``), a learned positional
embedding added to the tokens, pre-norm blocks (LayerNorm, ``nn.MultiheadAttention`` or the same attention
written by hand, residual adds, a GELU MLP) and a linear head on the class token (or on the mean token).
Every part is one the LRP engine has a rule for (AttnLRP / CP-LRP, see ``evalxai.methods.lrp.engine``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HandAttention(nn.Module):
    """Multi-head self-attention written with ``torch.matmul`` + ``softmax`` (or ``F.scaled_dot_product_attention``),
    parameter-compatible with ``nn.MultiheadAttention`` (``in_proj_weight`` / ``in_proj_bias`` / ``out_proj``)."""

    def __init__(self, dim: int, heads: int, bias: bool = True, sdpa: bool = False):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
            o = torch.matmul(a, v)
        return self.out_proj(o.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, bias: bool = True, attention: str = "module"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.module_attention = attention == "module"
        if self.module_attention:
            self.attn = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)
        elif attention in ("matmul", "sdpa"):
            self.attn = HandAttention(dim, heads, bias=bias, sdpa=attention == "sdpa")
        else:
            raise ValueError(f"attention='{attention}' is unknown in vit_tiny: use 'module', 'matmul' or 'sdpa'")
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp, bias=bias), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.module_attention:
            x = x + self.attn(h, h, h, need_weights=False)[0]
        else:
            x = x + self.attn(h)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``vit_tiny``: patch ``patch`` (strided conv), ``depth`` blocks of width ``dim`` with ``heads`` heads.

    ``pool``: "cls" (class token, the default) or "mean" (mean over tokens); ``pos_embed``: a learned positional
    embedding; ``bias=False`` removes every bias (convolution, linear layers, LayerNorm shifts): with
    ``pos_embed=False`` and ``pool="mean"`` that is the model on which CP-LRP with epsilon = 0 conserves relevance
    exactly. ``attention``: "module" (``nn.MultiheadAttention``), "matmul" (written by hand) or "sdpa"
    (``F.scaled_dot_product_attention``), all with the same parameters.
    """

    def __init__(self, input_shape, num_classes=10, patch=7, dim=64, depth=3, heads=4, mlp=128, bias=True,
                 pool="cls", pos_embed=True, attention="module"):
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ValueError(f"patch={patch} does not divide the image size {h}x{w} in vit_tiny: choose a divisor")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool='{pool}' is unknown in vit_tiny: use 'cls' or 'mean'")
        self.patch, self.pool = patch, pool
        tokens = (h // patch) * (w // patch) + (pool == "cls")
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02) if pos_embed else None
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp, bias, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, bias=bias)
        self.head = nn.Linear(dim, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))
