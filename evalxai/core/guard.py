"""Reversible model state: methods run the model in eval mode without parameter gradients and restore it."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn


def _hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            n += len(getattr(m, d, {}) or {})
    return n


@contextlib.contextmanager
def frozen(model: nn.Module, warn_train: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with ``requires_grad=False`` parameters; restore modes and flags on exit.

    A model handed over in training mode is switched to eval for the call (with a warning) and switched back:
    attributions of a model with active dropout or batch statistics would not be reproducible.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if warn_train and model.training:
        warnings.warn(f"{type(model).__name__} is in training mode: evalxai explains it in eval mode and restores "
                      "training mode afterwards; call model.eval() to silence this", stacklevel=3)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
