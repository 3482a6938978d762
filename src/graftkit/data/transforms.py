"""Train and eval transforms matched to a backbone's input size and normalisation."""
from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

from ..errors import ConfigError

AUGMENTS = ("none", "light")
EVAL_CROP_FRACTION = 0.875  # resize to size/0.875, centre-crop size: the usual ImageNet eval


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([T.Resize(round(image_size / EVAL_CROP_FRACTION)), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])


def build_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                          augment: str = "light") -> T.Compose:
    """``light``: random resized crop (35–100 % of the area) + horizontal flip. ``none``: as eval."""
    if augment == "none":
        return build_eval_transform(image_size, mean, std)
    if augment == "light":
        return T.Compose([T.RandomResizedCrop(image_size, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(mean, std)])
    raise ConfigError(f"unknown augment preset {augment!r}; choose one of {', '.join(AUGMENTS)}")
