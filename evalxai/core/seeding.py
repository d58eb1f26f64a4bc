"""Random draws that belong to a sample, not to its position in a batch.

Every random quantity of a method or metric (SmoothGrad noise, uniform baselines, random removal orders, tie
breaking) is drawn from a generator seeded by the run's ``seed`` and the sample's own content, so a sample gets the
same draws whatever batch it is explained or scored in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _sample_seeds(x: torch.Tensor, seed: int) -> list[int]:
    """One integer per sample from ``seed`` and the sample's bytes: draws do not depend on batching."""
    flat = x.detach().reshape(len(x), -1).double().cpu()
    weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64).sin()
    keys = ((flat * weights).sum(1) * 1e6).round().long().tolist()
    return [(seed * 1_000_003 + k) % (2**63 - 1) for k in keys]


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded by ``seed`` and the sample's bytes: draws do not depend on batching."""
    return [torch.Generator().manual_seed(s) for s in _sample_seeds(x, seed)]


def noise_draws(x: torch.Tensor, seed: int, draws: Sequence[int] | torch.Tensor, kind: str = "normal") -> torch.Tensor:
    """Noise of shape (len(draws), N, *x.shape[1:]): draw k of sample n comes from its own generator, seeded by
    ``seed``, the sample's bytes and k, so any subset of draws (a chunk) gives the same values as all of them at
    once. Standard normal or uniform on [0, 1); float64 for float64 inputs, else float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    draws = list(draws)
    noise = torch.empty(len(draws), len(x), *x.shape[1:], dtype=dtype)
    for n, s in enumerate(_sample_seeds(x, seed)):
        for i, k in enumerate(draws):
            g = torch.Generator().manual_seed((s * 6364136223846793005 + (k + 1) * 1442695040888963407) % 2**63)
            if kind == "normal":
                noise[i, n].normal_(generator=g)
            else:
                noise[i, n].uniform_(generator=g)
    return noise.to(x.device)


def per_sample_noise(x: torch.Tensor, seed: int, samples: int, kind: str = "normal") -> torch.Tensor:
    """``noise_draws`` 0..samples-1: shape (samples, N, *x.shape[1:])."""
    return noise_draws(x, seed, range(samples), kind)


def per_sample_permutations(x: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """A random permutation of 0..n-1 per sample, (N, n) int64 on x's device, drawn from ``sample_generators``."""
    return torch.stack([torch.randperm(n, generator=g) for g in sample_generators(x, seed)]).to(x.device)
