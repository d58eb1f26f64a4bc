"""Keep freed tensor memory in the process (glibc ``mallopt``), so that each new layer-sized tensor reuses pages.

With glibc's defaults a freed buffer of a few MB goes back to the operating system (``munmap`` or a heap trim)
and the next tensor of that size pays a page fault per 4 KiB on first touch. On the CPU that costs as much as
the arithmetic of an element-wise op: an LRP backward pass on LeNet at batch 128 spends about a third of its time
there. ``tune()`` raises the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB, as
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would. The command-line entry points call it; set
``EVALXAI_MALLOC=default`` to keep the allocator untouched. Elsewhere (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
_done: bool | None = None


def tune() -> bool:
    """Apply the thresholds once per process; True where glibc accepted them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("EVALXAI_MALLOC", "") == "default":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
