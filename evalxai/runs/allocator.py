"""Keep freed tensor memory in the process (glibc ``mallopt``), so that each new layer-sized tensor reuses pages.

With glibc's defaults a freed buffer of a few MB goes back to the operating system (``munmap`` or a heap trim)
and the next tensor of that size pays a page fault per 4 KiB on first touch. On the CPU that costs as much as
the arithmetic of an element-wise op: an LRP backward pass on LeNet at batch 128 spends about a third of its time
there. ``tune()`` raises the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB, as
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would. The command-line entry points call it; set
``EVALXAI_MALLOC=default`` to keep the allocator untouched. Elsewhere (macOS, musl) it does nothing.

From Python the tuning is opt-in, since it changes the whole process: call ``evalxai.tune_allocator()`` once, at
any time (before or after torch allocated memory; a second call does nothing). The price: the process keeps up to
1 GiB of freed memory per glibc arena for reuse instead of returning it at once; ``release()`` returns it on demand.
The same effect without code: start Python with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
_done: bool | None = None
_lock = threading.Lock()


def _libc():
    """glibc's handle on Linux, else None (musl has no mallopt thresholds, macOS no glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - AttributeError where they are missing (not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Apply the thresholds once per process; True where glibc accepted them (``evalxai.tune_allocator``).

    Idempotent and thread-safe; does nothing (returns False) off glibc or when ``EVALXAI_MALLOC=default``. No
    parameters: the thresholds are ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD``.

    Example:
        >>> import evalxai
        >>> evalxai.tune_allocator() in (True, False)
        True
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        _done = False
        if os.environ.get("EVALXAI_MALLOC", "") == "default":
            return _done
        libc = _libc()
        if libc is None:
            return _done
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _done


def release() -> bool:
    """Hand the process's freed heap memory back to the operating system now (glibc ``malloc_trim(0)``): after a
    large computation under ``tune()``, or before measuring memory. True where glibc released some."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(libc.malloc_trim(0))


GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024


@contextlib.contextmanager
def exact_resident_set(threshold: int = 64 * 1024) -> Iterator[None]:
    """For memory measurements: inside the block every allocation of ``threshold`` bytes or more gets its own
    mapping, returned to the OS when freed, so the resident set follows the live tensors instead of the heap's
    layout (freed chunks inside the heap stay resident until reused). Slower (a page fault per 4 KiB). Afterwards
    the tuned threshold is restored, or glibc's default (then fixed, no longer adaptive) in a process that was not
    tuned. Does nothing off glibc."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD if _done else GLIBC_DEFAULT_MMAP_THRESHOLD)
