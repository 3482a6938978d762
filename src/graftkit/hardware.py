"""Process-level CPU settings that make PyTorch's training step cheaper.

PyTorch allocates every activation map with ``malloc``. glibc serves blocks above a (dynamic,
at most 32 MiB) threshold with a fresh ``mmap`` and returns them to the system on ``free``, so every
step pays page faults to zero ~300 MB of fresh pages again (EfficientNet-Lite0, batch 16, 224 px:
~70,000 faults per step). Raising the thresholds keeps those pages in the heap for reuse:
measured on 2 cores, the train step gets ~1.1x faster and the forward pass ~1.7x (BENCHMARKS.md).
The cost: the process keeps its peak heap until it exits instead of shrinking after each step.

This is process-wide, so the library never does it on its own: ``graft`` (the CLI entry point) calls
:func:`tune_cpu_allocator` at start, and a program of your own that trains for long opts in with
``graftkit.tune_cpu_allocator()``. ``graftkit.load()`` and ``ImageClassifier`` leave the process
alone. Set ``GRAFTKIT_MALLOC=default`` to leave the allocator alone in ``graft`` too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (Linux only; once per process). True if it took effect."""
    if not sys.platform.startswith("linux") or os.environ.get("GRAFTKIT_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 1 GiB: blocks of any activation size come from the heap; trim only above 2 GiB of free top.
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` has run in this process and took effect (without running it)."""
    return tune_cpu_allocator.cache_info().currsize > 0 and tune_cpu_allocator()
