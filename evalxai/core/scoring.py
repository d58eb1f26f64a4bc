"""A model's outputs: how many there are, and target-class scores in logit, softmax or log-softmax space, for batches
and stacks of inputs."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from evalxai.core.guard import frozen
from evalxai.core.memory import images_per_chunk

SCORE_SPACES = ("logit", "softmax", "log_softmax")
_NUM_CLASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of model outputs: one forward of one sample in eval mode (``evalxai.core.guard.frozen``), remembered per
    model."""
    n = _NUM_CLASSES.get(model)
    if n is None:
        with frozen(model, warn_train=False), torch.no_grad():
            out = model(x[:1])
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError("the model must return a logits tensor of shape (N, classes)")
        n = out.shape[1]
        _NUM_CLASSES[model] = n
    return n


def check_score_space(space: str) -> str:
    if space not in SCORE_SPACES:
        raise ValueError(f"unknown score_space '{space}': use one of {list(SCORE_SPACES)}")
    return space


def target_scores(logits: torch.Tensor, target: torch.Tensor, space: str) -> torch.Tensor:
    """Target-class score of logits (B, classes) in the given space."""
    if space == "softmax":
        logits = logits.softmax(1)
    elif space == "log_softmax":
        logits = logits.log_softmax(1)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


@torch.no_grad()
def batched_scores(model: nn.Module, xs: torch.Tensor, target: torch.Tensor, space: str, batch_size: int | None = None
                   ) -> torch.Tensor:
    """Scores for a stack of inputs (S, N, ...) -> (S, N), forwarding as many images at a time as the memory
    budget allows (``batch_size``: at most that many)."""
    s, n = xs.shape[:2]
    flat = xs.reshape(s * n, *xs.shape[2:])
    batch_size = images_per_chunk(model, flat, "forward", batch_size, "scoring perturbed inputs")
    tgt = target.repeat(s)
    out = torch.cat([target_scores(model(flat[i:i + batch_size]), tgt[i:i + batch_size], space)
                     for i in range(0, len(flat), batch_size)])
    return out.view(s, n)


def require_images(x: torch.Tensor, what: str) -> None:
    """Raise unless x is a batch of images (N, C, H, W)."""
    if x.dim() != 4:
        raise ValueError(f"{what} needs images (N, C, H, W), got shape {tuple(x.shape)}")


def check_patch(x: torch.Tensor, size: int, name: str = "patch_size") -> int:
    """A square patch side that fits the images of x (1 .. min(H, W))."""
    side = min(x.shape[-2:])
    if not 1 <= size <= side:
        raise ValueError(f"{name}={size} must be between 1 and the image side {side}")
    return int(size)
