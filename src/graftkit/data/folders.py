"""Datasets and batch iterators over decoded images."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from .decoded import DecodedImages
from .transforms import make_view


def batch_order(num_items: int, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                drop_last: bool, shard: tuple[int, int] = (0, 1),
                sample_weights: torch.Tensor | None = None) -> list[list[int]]:
    """Index batches for one epoch; shuffled with ``generator`` (the global RNG is not touched).

    ``sample_weights`` (``(num_items,)``, with ``shuffle``): the epoch is ``num_items`` draws with
    replacement in proportion to them (a class-balanced sampler), from the same ``generator``.

    ``shard=(rank, world_size)``: every rank draws the same global batches and keeps every
    ``world_size``-th index of each, so the ranks' parts of a step are disjoint and together are
    exactly the batch a single process trains on (distributed data parallel).
    """
    if shuffle and sample_weights is not None:
        order = list(WeightedRandomSampler(sample_weights, num_items, replacement=True, generator=generator))
    else:
        order = torch.randperm(num_items, generator=generator).tolist() if shuffle else list(range(num_items))
    batches = [order[i:i + batch_size] for i in range(0, num_items, batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    rank, world_size = shard
    return [batch[rank::world_size] for batch in batches]


def step_share(num_items: int, batch_size: int, shard: tuple[int, int]) -> float:
    """Images per rank in a step's global batch (a whole batch, or all items when they fit in one;
    a fraction when a rank's part is uneven): a rank weights its loss by ``len(part) / step_share``
    so the all-reduced gradient is the global batch's mean exactly."""
    return min(batch_size, num_items) / shard[1]


def view_schedule(seed: int, epoch: int, num_items: int, num_views: int) -> np.ndarray:
    """Which cached view each item shows in ``epoch`` (the same on every run with this seed)."""
    if num_views <= 1:
        return np.zeros(num_items, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).integers(num_views, size=num_items)


class DecodedDataset(Dataset):
    """``(image tensor (3, H, W), label)`` from the decoded-image cache.

    Modes: a plain ``transform`` (random augmentation from the global RNG, or evaluation), or
    deterministic *views* when ``views`` is set (see ``make_view``).
    """

    def __init__(self, decoded: DecodedImages, keys: Sequence[str], labels: Sequence[int],
                 transform: Callable, eval_transform: Callable | None = None) -> None:
        self.decoded, self.keys, self.labels = decoded, list(keys), list(labels)
        self.transform, self.eval_transform = transform, eval_transform
        self.views: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.decoded.get([self.keys[index]])[0]).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.views is not None:
            return make_view(image, self.keys[index], int(self.views[index]), self.transform,
                             self.eval_transform), self.labels[index]
        return self.transform(image), self.labels[index]


class ImageBatches:
    """Batches of ``(images (B, 3, H, W), labels (B,))`` for one epoch at a time.

    In-process by default; with ``num_workers > 0`` a DataLoader decodes ahead in worker processes.
    Call ``set_epoch`` before iterating: it fixes the shuffle and, in view mode, the views.
    """

    def __init__(self, dataset: DecodedDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, num_views: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, shard: tuple[int, int] = (0, 1),
                 sample_weights: torch.Tensor | None = None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.sample_weights = sample_weights
        self.drop_last, self.num_views, self.shard = drop_last, num_views, shard
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.num_views is not None:
            self.dataset.views = view_schedule(self.seed, epoch, len(self.dataset), self.num_views)

    def __len__(self) -> int:
        n = len(self.dataset)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not (self.drop_last and full > 0) else 0)

    @property
    def step_share(self) -> float:
        return step_share(len(self.dataset), self.batch_size, self.shard)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = batch_order(len(self.dataset), self.batch_size, self.shuffle, self.generator, self.drop_last,
                              self.shard, self.sample_weights)
        if self.num_workers > 0:
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, persistent_workers=False,
                                generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
            yield from loader
            return
        for indices in batches:
            items = [self.dataset[i] for i in indices]
            yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
