"""Distributed data parallel on PyTorch's own engine: torchrun starts the processes, this joins them.

``torchrun --nproc-per-node N -m graftkit train ...`` (or ``graft train --nproc N``, which calls
torchrun's launcher) starts N copies of the command; each finds its rank in torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``: the ``env://`` contract)
and joins a process group: gloo on CPUs, NCCL on CUDA GPUs (one GPU per process). :class:`World`
is all that ``fit`` needs to know of it: which share of the data this rank trains on, how to sum
and gather results over the ranks, and the model wrapped in ``DistributedDataParallel``.

With one process (no torchrun) every method is the identity, so ``fit`` reads the same either way.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch
from torch import nn

from ..errors import ConfigError, GraftError
from ..hardware import usable_cores
from .runtime import LAUNCHER_THREADS, resolve_device

T = TypeVar("T")

# A rank that waits this long on the others (a collective, a barrier) fails instead of hanging; the
# launcher then stops the rest. Generous, because rank 0 decodes a new dataset while the others wait.
TIMEOUT = timedelta(minutes=30)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (``size == 1``: training alone)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``size``-th, from ``rank`` on (disjoint; together all of them)."""
        return list(items[self.rank::self.size])

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. decoding new images into the cache), then the others,
        which find its results, instead of N processes doing the same work at once."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks."""
        if self.size == 1:
            return list(values)
        total = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(total)
        return total.tolist()

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in the order of the items they were computed for.

        Each rank holds the rows of its :meth:`share` (items ``rank, rank + size, ...``), so item i
        comes from rank ``i % size``: each item is counted once (no padding, no repeats).
        """
        if self.size == 1:
            return rows
        local = rows.to(self._comm_device)
        counts = [torch.zeros(1, dtype=torch.long, device=self._comm_device) for _ in range(self.size)]
        torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=self._comm_device))
        longest = int(max(c.item() for c in counts))
        padded = local.new_zeros((longest, *rows.shape[1:]))
        padded[:len(rows)] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        out = rows.new_empty((int(sum(c.item() for c in counts)), *rows.shape[1:]))
        for rank, (part, count) in enumerate(zip(parts, counts)):
            out[rank::self.size] = part[:int(count.item())].to(rows.device)
        return out

    def gather_objects(self, value: Any) -> list[Any]:
        """``value`` of every rank, by rank (small things: random states)."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (the run folder it created, its scratch cache)."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def describe(self) -> str:
        """`` · 2 processes (gloo)`` for the run's first line; nothing alone."""
        return "" if self.size == 1 else f" · {self.size} processes ({torch.distributed.get_backend()})"

    def agree(self, decision: bool) -> bool:
        """Rank 0's decision, on every rank: choices made from clocks (checkpoint now? the time
        budget spent?) must be the same everywhere, or the ranks would part ways and wait forever."""
        if self.size == 1:
            return decision
        flag = torch.tensor([int(decision)], device=self._comm_device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` in ``DistributedDataParallel`` (gradients all-reduced in backward), or as it is alone.

        Evaluate the unwrapped ``net``: its ranks see different numbers of validation batches."""
        if self.size == 1:
            return net
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def gradient_sync(model: nn.Module, now: bool) -> contextlib.AbstractContextManager:
    """Under DDP, all-reduce the gradients only in the backward pass where ``now`` (the last
    accumulated part of a batch); the others accumulate locally. Alone: nothing to do."""
    no_sync = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if now or no_sync is None else no_sync()


def torchrun_world_size() -> int:
    """The number of processes torchrun started this one among (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device_name: str) -> World:
    """This process's :class:`World`: alone, or a rank that torchrun started (the process group is
    joined once per process and left at exit)."""
    device = resolve_device(device_name)
    size = torchrun_world_size()
    if size == 1:
        return World(device=device)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} is set but not {', '.join(missing)}: start distributed training "
                          f"with torchrun (or graft train --nproc N).")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} would use GPU {local_rank}, but {torch.cuda.device_count()} are visible: "
                              f"start at most one process per GPU (--nproc-per-node).")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        atexit.register(torch.distributed.destroy_process_group)
    return World(rank, size, device)


def check_launch(nproc: int, device_name: str) -> None:
    """Refuse, in one line, a ``--nproc`` this machine cannot run."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if torchrun_world_size() > 1:
        raise ConfigError("--nproc starts torchrun, but this process is already one of torchrun's ranks: "
                          "drop --nproc (torchrun's --nproc-per-node sets the number).")
    device = resolve_device(device_name)
    if device.type == "cuda":
        if nproc > torch.cuda.device_count():
            raise ConfigError(f"--nproc {nproc} needs one GPU per process; {torch.cuda.device_count()} are visible.")
        return
    cores = usable_cores()
    if nproc > cores:
        raise ConfigError(f"--nproc {nproc} is more processes than this machine's {cores} CPU cores: each "
                          f"would wait on the others. Pass --nproc {cores} or fewer.")


class DistributedRunFailed(GraftError):
    """A rank of a ``graft train --nproc`` job failed; the launcher stopped the others."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``python -m graftkit ARGV`` as ``nproc`` ranks on this machine through torchrun's launcher
    (``torch.distributed.run``, a free port from rendezvous on localhost:0); return when all finished.

    Each rank gets ``cores / nproc`` threads unless OMP_NUM_THREADS is set, so the processes share
    the machine instead of each taking every core.

    Raises:
        DistributedRunFailed: a rank exited with an error (its own message is above, from that rank).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "OMP_NUM_THREADS" not in os.environ:  # this launcher's own children; a rank's share is its default
        os.environ["OMP_NUM_THREADS"] = os.environ[LAUNCHER_THREADS] = str(max(1, usable_cores() // nproc))
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc), "--monitor-interval", "0.5",
                                "-m", "graftkit", *argv])
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 1
        how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {failure.signal_name()}"
        raise DistributedRunFailed(f"rank {rank} of {nproc} failed ({how}); the other ranks were stopped. "
                                   f"Its message is above.", code) from None
