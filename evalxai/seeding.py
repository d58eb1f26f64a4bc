"""Random draws that belong to a sample, not to its position in a batch.

Every random quantity of a method or metric (SmoothGrad noise, uniform baselines, random removal orders, tie
breaking) is drawn from a generator seeded by the run's ``seed`` and the sample's own content, so a sample gets the
same draws whatever batch it is explained or scored in.
"""
from __future__ import annotations

import torch


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded by ``seed`` and the sample's bytes: draws do not depend on batching."""
    flat = x.detach().reshape(len(x), -1).double().cpu()
    weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64).sin()
    keys = ((flat * weights).sum(1) * 1e6).round().long().tolist()
    return [torch.Generator().manual_seed((seed * 1_000_003 + k) % (2**63 - 1)) for k in keys]


def per_sample_noise(x: torch.Tensor, seed: int, samples: int, kind: str = "normal") -> torch.Tensor:
    """Noise of shape (samples, N, *x.shape[1:]) drawn per sample from ``sample_generators`` (in float64 for
    float64 inputs, else float32), filled in place: no per-sample temporaries."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    noise = torch.empty(len(x), samples, *x.shape[1:], dtype=dtype)
    for i, g in enumerate(sample_generators(x, seed)):
        if kind == "normal":
            noise[i].normal_(generator=g)
        else:
            noise[i].uniform_(generator=g)
    return noise.transpose(0, 1).to(x)


def per_sample_permutations(x: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """A random permutation of 0..n-1 per sample, (N, n) int64 on x's device, drawn from ``sample_generators``."""
    return torch.stack([torch.randperm(n, generator=g) for g in sample_generators(x, seed)]).to(x.device)
