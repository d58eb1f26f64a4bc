"""Seeded training (Adam, cross-entropy) and test accuracy."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on (x, y), in eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy over an iterable of (x, y) batches (a test split streamed from disk), in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random integer offset in [-max_shift, max_shift] (zero fill)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * p)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 5, batch_size: int = 64,
                lr: float = 1e-3, weight_decay: float = 0.0, augment_shift: int = 0, seed: int = 0,
                progress: bool = True) -> nn.Module:
    """Train with Adam + one-cycle schedule on shuffled mini-batches (optionally randomly shifted images).

    Initialisation, shuffling and augmentation all follow ``seed``.
    """
    if augment_shift and not x.is_floating_point():
        raise ValueError(f"augment_shift={augment_shift} shifts images, but the inputs are {x.dtype} (token ids): set "
                         "model.train.augment_shift=0 (evalxai.models.train)")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(x) // batch_size))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            xb = random_shift(x[idx], augment_shift, gen) if augment_shift else x[idx]
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    return model
