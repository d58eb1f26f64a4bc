"""Reversible model state: methods run the model in eval mode without parameter gradients and restore it; models
derived from a model (modified copies) are kept while the model's state is the one they were built from."""
from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import TypeVar

import torch
from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_load_state_dict_pre_hooks")
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: (model_state, derived)}
T = TypeVar("T")


def _hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, d, {}) or {}) for m in model.modules() for d in _HOOK_DICTS)


def tensor_state(model: nn.Module) -> tuple:
    """The identity and version of every parameter and buffer: equal while none was replaced or changed in place."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def model_state(model: nn.Module) -> tuple:
    """``tensor_state`` with every module's mode and hooks and every parameter's ``requires_grad``: what a deep copy
    of the model takes from it (besides plain attributes)."""
    modules = tuple((m.training, *(tuple(getattr(m, d, {}) or {}) for d in _HOOK_DICTS)) for m in model.modules())
    return tensor_state(model), modules, tuple(p.requires_grad for p in model.parameters())


def derived(model: nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, something derived from ``model`` (a modified deep copy), remembered per model (weakly) and ``key``
    while ``model_state(model)`` is the one it was built from: what is prepared once per model object (LRP's traced
    plan, the memory probe) is then prepared once, not on every call. The last build per key is kept (its memory
    too); a caller that changes it restores what it changed before using it. Plain attributes of the model that
    change without a new ``key`` are not seen, nor tensors written through ``.data`` (their version stays): callers
    bring the kept copy up to date with ``refresh_from``."""
    entries = _DERIVED.setdefault(model, {})
    state = model_state(model)
    seen = entries.get(key)
    if seen is not None and seen[0] == state:
        return seen[1]
    new = build()
    entries[key] = (state, new)
    return new


def refresh_from(copy: nn.Module, model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Copy every parameter and buffer of ``model`` into the same-named, same-shaped one of ``copy`` (a kept
    ``derived`` copy), except those of the modules named in ``skip`` and below: one pass over the weights, so that
    the copy also follows changes ``model_state`` cannot see (``p.data`` written in place keeps ``p._version``)."""
    def kept(name: str) -> bool:
        return not any(name == s or name.startswith(s + ".") or s == "" for s in skip)

    dst = {**dict(copy.named_parameters()), **dict(copy.named_buffers())}
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            d = dst.get(name)
            if d is not None and d.shape == t.shape and kept(name.rpartition(".")[0]):
                d.copy_(t)


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
