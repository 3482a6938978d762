"""A registry of small backbone factories (the built-in ones register in ``catalog.py``, which
imports them; nothing here imports a factory, so the registry and its plugins form no cycle).

A factory returns a :class:`Backbone`: the feature extractor split into ordered *stages*, its
feature width, the normalisation its weights expect and its native input size. graftkit adds the
head. Stages run in sequence (``forward = pool(stages[-1](...stages[0](x)))``), so freezing, per-stage
learning rates and (later) caching the output of a frozen prefix all act on the same list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A feature extractor as ordered stages plus global pooling.

    Args:
        stages: modules run one after the other; stage 0 is nearest the input.
        stage_names: one short name per stage, for logs.
        num_features: width of the pooled feature vector.
        mean, std: per-channel normalisation the weights expect (inputs scaled to [0, 1] first).
        image_size: native input size in pixels.
        name: registry name.
        pool: maps the last stage's ``(B, C, H, W)`` map to ``(B, num_features)``.

    ``imagenet_head``: the pretrained model's ImageNet classifier ``(weight (1000, num_features), bias)``
    when it has one (not a module: it is not trained or saved), for ``--head-init``.
    """

    def __init__(self, stages: Sequence[nn.Module], stage_names: Sequence[str], num_features: int,
                 mean: Sequence[float], std: Sequence[float], image_size: int, name: str,
                 pool: nn.Module | None = None, pretrained: bool = False) -> None:
        super().__init__()
        if len(stages) != len(stage_names):
            raise ConfigError(f"backbone {name!r}: {len(stages)} stages but {len(stage_names)} names")
        self.stages = nn.ModuleList(stages)
        self.stage_names = list(stage_names)
        self.pool = pool if pool is not None else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = num_features
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        self.name = name
        self.pretrained = pretrained
        self.imagenet_head: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward_stages(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run stages ``start..end-1`` on ``x`` (the input of stage ``start``)."""
        for stage in self.stages[start:end]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, num_features)`` pooled features."""
        return self.pool(self.forward_stages(x))


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    factory: Callable[..., Backbone]
    offline: bool
    description: str
    image_size: int


_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(name: str, *, offline: bool, image_size: int = 224, description: str = "") -> Callable:
    """Decorator: register ``factory(pretrained: bool, weights: Path | None) -> Backbone``."""

    def wrap(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ConfigError(f"backbone {name!r} is registered twice; pick another name")
        _REGISTRY[name] = BackboneInfo(name, factory, offline, description, image_size)
        return factory

    return wrap


def registered_backbones() -> list[BackboneInfo]:
    """What is registered so far, in registration order (the built-ins once ``graftkit.backbones``
    is imported: :func:`graftkit.backbones.list_backbones`)."""
    return list(_REGISTRY.values())


def registered(name: str) -> BackboneInfo | None:
    return _REGISTRY.get(name)
