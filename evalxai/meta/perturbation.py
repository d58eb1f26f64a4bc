"""MetaQuantus's four perturbation tests (Hedström et al., TMLR 2023): minor (resilience) and disruptive
(adversary) noise on the model's parameters or on the input, and which samples each test keeps.

- model tests: every parameter w of a copy of the model becomes w * e, e ~ N(1, sigma) element-wise (the user's
  model is never changed); MetaQuantus's sigma: 0.001 (resilience), 2.0 on MNIST-scale models (adversary).
- input tests: x + U(-delta, delta) in pixel units (divided by the dataset's std in model space), clipped to the
  data range [low, high]; delta 0.001 (resilience) and 5 (adversary). Token ids have no small additive noise: each
  real token that is not a special one is replaced, with probability ``rate``, by a token drawn uniformly from the
  vocabulary's ordinary tokens (``perturb_tokens``; evalxai's analogue for text, rates 0.02 and 0.5 by default).
- a resilience test keeps the samples whose predicted class is unchanged, an adversary test those whose class
  changed (compared with the unperturbed model's prediction on the unperturbed input).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from evalxai.core.baselines import data_range
from evalxai.core.seeding import noise_draws
from evalxai.models.text import EmbeddingsInput, token_logits

SPACES = ("model", "input")


@dataclass(frozen=True)
class PerturbationTest:
    """One test: ``space`` model or input, ``kind`` resilience or adversary, ``noise`` sigma (model) or delta
    (input)."""
    space: str
    kind: str
    noise: float

    @property
    def name(self) -> str:
        return f"{self.space}_{self.kind}"

    def __post_init__(self):
        from evalxai.meta.consistency import KINDS

        if self.space not in SPACES or self.kind not in KINDS:
            raise ValueError(f"perturbation test {self.space}/{self.kind}: space must be one of {list(SPACES)} and "
                             f"kind one of {list(KINDS)} (evalxai.meta)")
        if not self.noise > 0:
            raise ValueError(f"{self.name} noise={self.noise} must be > 0 (evalxai.meta)")


def default_tests(model_resilience: float = 0.001, model_adversary: float = 2.0, input_resilience: float = 0.001,
                  input_adversary: float = 5.0) -> list[PerturbationTest]:
    """MetaQuantus's MNIST test suite, in its order."""
    return [PerturbationTest("model", "resilience", model_resilience),
            PerturbationTest("model", "adversary", model_adversary),
            PerturbationTest("input", "resilience", input_resilience),
            PerturbationTest("input", "adversary", input_adversary)]


def draw_seed(seed: int, test: PerturbationTest, draw: int) -> int:
    """The seed of one draw of one test (a different stream per test, draw and run seed)."""
    tag = sum((i + 1) * ord(c) for i, c in enumerate(test.name))
    return (seed * 1_000_003 + tag * 7_919 + draw * 104_729) % (2**63 - 1)


class ModelNoise:
    """Perturbed copies of ``model`` (one working copy, rewritten per draw: the original is never touched)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.work = copy.deepcopy(model)
        self.work.eval()

    @torch.no_grad()
    def __call__(self, sigma: float, seed: int) -> nn.Module:
        """The working copy with parameters w * e, e ~ N(1, sigma), drawn on the CPU from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        for w, w0 in zip(self.work.parameters(), self.model.parameters()):
            e = torch.empty(w0.shape, dtype=w0.dtype).normal_(1.0, sigma, generator=g)
            w.copy_(w0 * e.to(w0.device))
        return self.work


def perturb_input(x: torch.Tensor, delta: float, seed: int, low=None, high=None, std=None) -> torch.Tensor:
    """clip(x + U(-delta, delta) / std, low, high) per element; the draw of a sample depends on ``seed`` and its own
    content only (``evalxai.core.seeding.noise_draws``), not on the batch. ``low`` / ``high`` / ``std``: floats or
    per-channel tensors (model space); None: the data range's default (``evalxai.core.baselines.data_range``), std 1."""
    u = noise_draws(x, seed, [0], "uniform")[0].to(x.dtype)
    noise = (2.0 * u - 1.0) * delta
    if std is not None:
        noise = noise / torch.as_tensor(std, dtype=x.dtype, device=x.device)
    lo, hi = data_range(low, high, x)
    return torch.maximum(torch.minimum(x + noise, hi), lo)


def perturb_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, rate: float, seed: int,
                   replacements: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with each real token (mask 1) whose id is in ``replacements`` (the ordinary tokens: specials such
    as [CLS] and padding stay) replaced, with probability ``rate``, by an id drawn uniformly from ``replacements``;
    per sample from ``seed`` and its own ids (``noise_draws``), not from the batch."""
    u = noise_draws(input_ids, seed, [0, 1], "uniform")
    ordinary = torch.isin(input_ids, replacements.to(input_ids.device)) & (attention_mask != 0)
    pick = replacements.to(input_ids.device)[(u[1] * len(replacements)).long().clamp(max=len(replacements) - 1)]
    return torch.where(ordinary & (u[0] < rate), pick, input_ids)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes (of token ids with their ``attention_mask``), forwarding as many inputs at a time as the
    memory budget allows."""
    from evalxai.core.guard import frozen
    from evalxai.core.memory import images_per_chunk

    if attention_mask is None:
        step = images_per_chunk(model, x, "forward", None, "predicting")
    else:  # the cost of a sequence, measured on the model as a function of its embeddings
        wrapped = EmbeddingsInput(model, attention_mask[:1])
        step = images_per_chunk(wrapped, wrapped.embed(x[:1]), "forward", None, "predicting")
    with frozen(model, warn_train=False), torch.no_grad():
        if attention_mask is None:
            return torch.cat([model(x[i:i + step]).argmax(1) for i in range(0, len(x), step)])
        return torch.cat([token_logits(model, x[i:i + step], attention_mask[i:i + step]).argmax(1)
                          for i in range(0, len(x), step)])


def kept(test: PerturbationTest, pred0: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Samples a test keeps: unchanged predictions (resilience) or changed ones (adversary)."""
    return pred == pred0 if test.kind == "resilience" else pred != pred0
