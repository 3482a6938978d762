"""Transforms on decoded uint8 squares, matched to a backbone's input size and normalisation.

Images are decoded once into ``(3, S, S)`` uint8 tensors (``S = round(image_size / 0.875)``,
see ``decoded.py``). Evaluation is the centre ``image_size`` crop of that square; augmentation works
on the same square. A *view* is one deterministic augmentation of one image: view 0 is the
evaluation crop, view ``v > 0`` a random crop + flip seeded by (image, v), so cached features of a
view are reproducible.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

from ..errors import ConfigError

AUGMENTS = ("none", "light")
EVAL_CROP_FRACTION = 0.875  # resize to size/0.875, centre-crop size: the usual ImageNet eval


def decode_size_for(image_size: int) -> int:
    return round(image_size / EVAL_CROP_FRACTION)


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """``(3, S, S)`` uint8 → ``(3, image_size, image_size)`` normalised float."""
    return v2.Compose([v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


def build_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                          augment: str = "light") -> v2.Compose:
    """``light``: random resized crop (35–100 % of the area) + horizontal flip. ``none``: as eval."""
    if augment == "none":
        return build_eval_transform(image_size, mean, std)
    if augment == "light":
        return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(mean), list(std))])
    raise ConfigError(f"unknown augment preset {augment!r}; choose one of {', '.join(AUGMENTS)}")


def view_seed(key: str, view: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}:{view}".encode(), digest_size=8).digest(), "little") >> 1


def make_view(image: torch.Tensor, key: str, view: int, train_transform: Callable,
              eval_transform: Callable) -> torch.Tensor:
    """View 0: the evaluation crop. View v > 0: an augmentation seeded by (image key, v); the global
    random state is left untouched."""
    if view == 0:
        return eval_transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(key, view))
        return train_transform(image)
