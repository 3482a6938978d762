"""Datasets over scanned samples."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .images import load_image
from .scan import Sample


class ImageListDataset(Dataset):
    """``(image tensor (3, H, W), label)`` for each sample; decodes at most ``min_size`` JPEG scale."""

    def __init__(self, samples: Sequence[Sample], transform: Callable, min_size: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        try:
            image = load_image(sample.path, min_size=self.min_size)
        except Exception as exc:  # the file changed or vanished after the scan
            raise DataError(f"cannot read '{sample.path}' during training ({exc}). "
                            f"Run 'graft check-data' on the folder.") from None
        return self.transform(image), sample.label
