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

OpenMP's threads likewise, but only when asked: with ``GRAFTKIT_OPENMP=passive``, :func:`tune_openmp`
(called by ``graft`` before torch loads) makes idle threads sleep instead of spinning, so a busy
machine's other processes get the cores they wait for. It is off by default: measured side by side,
it made a quiet fine-tune epoch ~20 % slower (5.1 s against 4.2 s, ``benchmarks/contention.py``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# OpenMP reads these once, when torch loads. PASSIVE: a thread that finished its share of a
# parallel region sleeps rather than spinning for the next one (libgomp, Intel OpenMP).
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

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


def tune_openmp() -> dict[str, str]:
    """Set :data:`OPENMP_ENV` where the environment leaves it unset, before torch is imported (after,
    OpenMP has read it: nothing changes). Returns what it set; ``graft`` calls it at start."""
    if "torch" in sys.modules or os.environ.get("GRAFTKIT_OPENMP", "default") != "passive":
        return {}
    chosen = {name: value for name, value in OPENMP_ENV.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen


def env_threads() -> int | None:
    """The thread count OMP_NUM_THREADS or MKL_NUM_THREADS asks for (None when neither is a number)."""
    for name in THREAD_ENV_NAMES:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def physical_cores() -> int:
    """Physical cores as PyTorch counts them for its default thread count (/proc/cpuinfo's distinct
    (physical id, core id) pairs; the logical CPU count where that file is missing)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return os.cpu_count() or 1
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or os.cpu_count() or 1
