"""Server-side batching: requests that arrive together share one forward pass.

Each request puts its images on an asyncio queue and awaits a future. One worker task takes the
first waiting request, then whatever else arrives within ``max_wait`` seconds (up to ``max_batch``
images), runs the model once on all of them in the model's thread and hands each request its rows.
While a batch runs, the next one fills up, so under load batches grow by themselves and an idle
server answers a lone request after at most ``max_wait``.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

RunModel = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Job:
    squares: Sequence[np.ndarray]
    future: asyncio.Future = field(repr=False)


class Batcher:
    """``await batcher.submit(squares)`` → ``run_model`` outputs for those squares."""

    def __init__(self, run_model: RunModel, executor: Executor, max_batch: int = 32, max_wait: float = 0.01) -> None:
        self.run_model, self.executor = run_model, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batch_sizes: list[int] = []  # images per forward pass, for /health and the load benchmark
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        job = _Job(squares, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        count = len(jobs[0].squares)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while count < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 and self.queue.empty():
                break
            try:
                job = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            jobs.append(job)
            count += len(job.squares)
        return jobs

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            squares = [q for job in jobs for q in job.squares]
            self.batch_sizes.append(len(squares))
            try:
                probs, features = await loop.run_in_executor(self.executor, self.run_model, squares)
            except Exception as exc:  # the model failed: every waiting request gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                end = start + len(job.squares)
                if not job.future.done():  # a client that went away cancels its future
                    job.future.set_result((probs[start:end], features[start:end]))
                start = end
