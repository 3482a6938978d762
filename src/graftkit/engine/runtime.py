"""Per-run runtime choices: the device, seeding, batch sizes, precision and its autocast.

Nothing here changes the process beyond the run (the allocator tuning of ``graft`` is in
:mod:`graftkit.hardware`, opt-in from the API): a phase's thread count is set for the phase and
restored after it (:func:`torch_threads`).
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..hardware import env_threads, physical_cores, usable_cores

# A head step on cached features (batch x feature width floats) is too small to share between
# threads: each parallel region costs more in waking and waiting than it saves, and with another
# process on the cores every region waits for a descheduled thread. Measured on 2 cores (load ~3-12),
# one thread was 4-16x faster per step at every size up to 1024 x 1280 (BENCHMARKS.md, contention).
HEAD_ONE_THREAD_MAX = 1 << 21
# graft train --nproc's launcher sets OMP_NUM_THREADS to each rank's share of the cores and names it here
LAUNCHER_THREADS = "GRAFTKIT_RANK_THREADS"


def resolve_device(name: str) -> torch.device:
    """The device to train on."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_batch_size(cfg: TrainConfig, device: torch.device, head_only: bool = False) -> int:
    """``--batch-size`` if given, else 64 on a GPU, and on a CPU 32: with the allocator tuned
    (graftkit.hardware) EfficientNet-Lite0 trains ~1.08x faster per image than at 16, in ~2.6 GB, and
    larger batches gain little more. A head trained on cached features costs milliseconds per epoch
    at any batch size, so there the CPU default is 16: twice the updates per epoch."""
    if cfg.batch_size:
        return cfg.batch_size
    return 64 if device.type == "cuda" else (16 if head_only else 32)


def eval_batch_size(device: torch.device) -> int:
    """Fixed per device type, so `graft evaluate` batches exactly as training's final evaluation."""
    return 128 if device.type == "cuda" else 16


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``precision`` ("bf16" or "fp32") on ``device``."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # Without native bf16 instructions oneDNN emulates bf16 and runs about 2x slower than fp32
    # (measured on an AVX-512 Xeon without avx512_bf16/amx): use it only where the CPU has them.
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def user_threads() -> int | None:
    """The intra-op thread count the user chose (OMP_NUM_THREADS / MKL_NUM_THREADS, or a
    ``torch.set_num_threads`` that differs from PyTorch's default); None when the process runs with
    the default. Under ``graft train --nproc`` a rank's share of the cores is its default."""
    launcher = os.environ.get(LAUNCHER_THREADS)
    by_launcher = launcher is not None and launcher == os.environ.get("OMP_NUM_THREADS")
    if not by_launcher and env_threads() is not None:
        return env_threads()
    current = torch.get_num_threads()
    return None if current == (int(launcher) if by_launcher else physical_cores()) else current


def phase_threads(head_only: bool, batch_size: int, width: int, others: float | None = None) -> int | None:
    """The intra-op threads a training epoch runs with; None keeps the process's count.

    A head trained on cached pooled features (``head_only``) gets one thread while its step is small
    (``batch_size * width <= HEAD_ONE_THREAD_MAX``). An epoch that runs backbone stages gets the cores
    that other programs left free: ``others`` is how many of this process's cores they kept busy
    lately (:class:`CoreLoad`), and with k of n busy the epoch runs on n - k threads (at least one):
    a thread that shares its core waits at every parallel region for one that is descheduled. A
    count the user chose is never changed."""
    if user_threads() is not None:
        return None
    if head_only and batch_size * width <= HEAD_ONE_THREAD_MAX:
        return 1
    if head_only or others is None:
        return None
    cores = usable_cores()
    free = max(1, min(cores, int(cores - others + 0.5)))
    return None if free == cores else free


FIXED_THREADS = "GRAFTKIT_THREADS"  # "fixed": never adapt to other programs (runs repeat bit for bit)


class CoreLoad:
    """How many of this process's cores other programs kept busy since the last reading: the busy
    time of those CPUs in /proc/stat (steal included) less this process's own CPU time, over the
    wall time between readings. ``others()`` is None where /proc/stat cannot be read, and with
    ``GRAFTKIT_THREADS=fixed`` (a thread count that follows the load can change the last bits of a
    result: set it, or OMP_NUM_THREADS, for runs that must repeat exactly)."""

    def __init__(self) -> None:
        self._cpus = {f"cpu{i}" for i in (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ())}
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        fields = (line.split() for line in lines)
        rows = [[int(v) for v in f[1:9]] for f in fields if f and f[0] in self._cpus]
        if not rows:
            return None
        busy = sum(sum(t) - t[3] - t[4] for t in rows)  # user nice system idle iowait irq softirq steal
        own = os.times()
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system

    def others(self) -> float | None:
        """Cores busy with other programs since the last call (or since this object was made)."""
        if os.environ.get(FIXED_THREADS) == "fixed":
            return None
        now, last = self._read(), self._last
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        self._last = now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` intra-op threads and restore the previous count after it
    (None: leave the count alone)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
