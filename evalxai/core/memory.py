"""A memory budget instead of a batch size: every method and metric sizes its chunks in bytes per image.

``memory_budget("4GB")`` sets the budget for the process; ``with memory_budget("1GB"): ...`` sets it for a block.
Without one, the budget is half of the memory available (``MemAvailable`` of /proc/meminfo) on the CPU, or 80 %
of the free memory of the GPU the model is on. The bytes one image costs are estimated once per model, input
shape and dtype from a one-image gradient pass: the tensors autograd saves for the backward pass (recorded
with ``torch.autograd.graph.saved_tensors_hooks``), times a margin per kind of work. Results never depend on
the budget: chunks only split the batch, and every method and metric gives per-image results that do not depend
on the batch they are computed in.
"""
from __future__ import annotations

import contextlib
import re
import time
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# bytes per image, relative to a plain gradient pass (its saved tensors + the input gradient)
_KIND_FACTOR = {"forward": 0.5, "gradient": 1.5, "lrp": 3.0}
_DEFAULT_SHARE_CPU, _DEFAULT_SHARE_GPU = 0.5, 0.8
# Forwards of perturbation stacks on the CPU: chunks of about this many bytes of activations (at least
# _FORWARD_MIN_IMAGES images) run faster per image than one chunk as large as the budget allows, whose activations
# leave the caches (LeNet, 1 600 stacked MNIST images: 0.31 s in one chunk, 0.18-0.20 s in chunks of 128-512).
_FORWARD_CHUNK_BYTES, _FORWARD_MIN_IMAGES = 32 * 2**20, 64
_BUDGET: list[int | None] = [None]
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40,
          "tb": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``"1.5GB"``, ``"512MB"`` (binary units: 1 GB = 2^30 bytes)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory_budget={value} must be positive")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"memory_budget={value!r} is not a size: write e.g. 4GB, 512MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_MEMINFO: list = [float("-inf"), 0]  # (monotonic time read, MemAvailable bytes)


def _available_cpu() -> int:
    """MemAvailable, read at most once a second (a read costs ~0.4 ms; ``score`` and every chunked step ask)."""
    now = time.monotonic()
    if now - _MEMINFO[0] < 1.0:
        return _MEMINFO[1]
    _MEMINFO[:] = [now, _read_available()]
    return _MEMINFO[1]


def _read_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def budget(device: torch.device | str | None = None) -> int:
    """The budget in bytes: the one set with ``memory_budget``, else a safe share of the device's free memory."""
    if _BUDGET[0] is not None:
        return _BUDGET[0]
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(_DEFAULT_SHARE_GPU * free)
    return int(_DEFAULT_SHARE_CPU * _available_cpu())


class memory_budget:  # noqa: N801 - reads as a function: memory_budget("4GB")
    """Set the memory budget of ``explain``, ``score`` and ``maximize``; as a context manager, for a block only.

    value: a size (``"4GB"``, ``"512MB"``: binary units) or a number of bytes; None: the default, a safe share of
        the device's free memory. Work is chunked to fit; an image that does not fit alone is an error.

    Example:
        >>> import evalxai
        >>> from evalxai.core.memory import budget
        >>> with evalxai.memory_budget("1GB"):
        ...     budget()
        1073741824
    """

    def __init__(self, value: int | float | str | None = None) -> None:
        self.previous = _BUDGET[0]
        _BUDGET[0] = None if value is None else parse_bytes(value)

    def __enter__(self) -> memory_budget:
        return self

    def __exit__(self, *exc: object) -> bool:
        _BUDGET[0] = self.previous
        return False


def image_cost(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes a plain gradient pass needs per image of x's shape: measured once (per model, shape, dtype, device)
    from one image: the activations autograd saves for the backward pass (not the weights), plus the input and its
    gradient."""
    key = (tuple(x.shape[1:]), x.dtype, x.device.type)
    seen = _COSTS.setdefault(model, {})
    if key not in seen:
        saved: dict[int, int] = {}
        weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

        def pack(t):  # activations only: the weights autograd saves are there once, not per image
            ptr = t.untyped_storage().data_ptr()
            if t.device.type == x.device.type and ptr not in weights:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        one = x[:1].detach().clone().requires_grad_(True)  # own storage: a view would count its whole base
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(one)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                torch.autograd.grad(out.sum(), one, allow_unused=True)
        seen[key] = sum(saved.values()) + 2 * one.numel() * one.element_size()
    return seen[key]


def images_per_chunk(model: nn.Module, x: torch.Tensor, kind: str = "gradient", cap: int | None = None,
                     what: str = "this step") -> int:
    """How many images of x's shape fit the budget at once for ``kind`` of work (forward, gradient, lrp);
    ``cap`` bounds it (a user's batch_size). Forwards on the CPU take at most about ``_FORWARD_CHUNK_BYTES`` of
    activations at a time (at least ``_FORWARD_MIN_IMAGES`` images), a speed bound, not a memory one. An image that
    does not fit alone is an error saying how much it needs."""
    per_image = max(1, int(_KIND_FACTOR[kind] * image_cost(model, x)))
    available = budget(x.device)
    if per_image > available:
        raise MemoryError(f"{what} needs about {per_image / 2**20:.0f} MB per image of shape {tuple(x.shape[1:])}, "
                          f"more than the memory budget of {available / 2**20:.0f} MB: raise memory_budget "
                          "(e.g. memory_budget=8GB) or use smaller inputs")
    n = available // per_image
    if kind == "forward" and x.device.type == "cpu":
        n = min(n, max(_FORWARD_MIN_IMAGES, _FORWARD_CHUNK_BYTES // per_image))
    return int(max(1, min(n, cap) if cap else n))


_PROGRESS = [False]


def show_progress(on: bool) -> None:
    """Progress bars per chunk on long steps (IG/SmoothGrad passes, perturbation stacks); the pipeline turns them on
    with ``progress=true``."""
    _PROGRESS[0] = bool(on)


@contextlib.contextmanager
def run_scope(limit: int | float | str | None, progress: bool) -> Iterator[None]:
    """What one run sets for everything it calls: the memory budget ``limit`` (None: the current one) and the
    chunk progress bars; both restored on exit (progress off)."""
    show_progress(progress)
    try:
        with memory_budget(limit):
            yield
    finally:
        show_progress(False)


def chunked(total: int, step: int, desc: str) -> Iterable[int]:
    """range(0, total, step), with a progress bar per chunk when progress is on and there is more than one."""
    starts = range(0, total, max(1, step))
    if not _PROGRESS[0] or len(starts) < 2:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc=desc, leave=False, unit="chunk")
