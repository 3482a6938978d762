"""A registry of small backbone factories.

A factory returns a :class:`Backbone`: the feature extractor split into ordered *stages*, its
feature width, the normalisation its weights expect and its native input size. graftkit adds the
head. Stages run in sequence (``forward = pool(stages[-1](...stages[0](x)))``), so freezing, per-stage
learning rates and (later) caching the output of a frozen prefix all act on the same list.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
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


def list_backbones() -> list[BackboneInfo]:
    """The registered backbones, in registration order."""
    _load_builtin()
    return list(_REGISTRY.values())


def native_image_size(name: str) -> int:
    """The input size a backbone was trained at, without building it."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name].image_size
    from .timm_models import timm_model_exists

    if timm_model_exists(name):
        import timm

        cfg = timm.get_pretrained_cfg(name)
        return int(getattr(cfg, "input_size", (3, 224, 224))[-1]) if cfg is not None else 224
    return 224


def create_backbone(name: str, pretrained: bool = True, weights: str | Path | None = None) -> Backbone:
    """Build a registered backbone, or any timm model by name.

    Args:
        name: a registry name (``graft backbones``) or a timm model name.
        pretrained: load ImageNet weights (packaged ones for the built-ins, timm's hub otherwise).
        weights: a local ``.safetensors`` or ``.pth`` state dict to load instead (never unpickled).
    """
    _load_builtin()
    if weights is not None:
        from .weights import load_weights_into, read_state_dict

        state = read_state_dict(weights)
        if any(k.startswith("stages.") for k in state):  # saved by graftkit (e.g. `graft pretrain`)
            backbone = create_backbone(name, pretrained=False)
            load_weights_into(backbone, state, str(weights))
            backbone.pretrained = True
            return backbone
    info = _REGISTRY.get(name)
    if info is not None:
        return info.factory(pretrained=pretrained and weights is None, weights=weights)
    from .timm_models import create_timm_backbone, timm_model_exists

    if timm_model_exists(name):
        return create_timm_backbone(name, pretrained=pretrained and weights is None, weights=weights)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown backbone {name!r}: not in graftkit's registry nor in timm.{hint} "
                      f"Run 'graft backbones' for the list.")


def _load_builtin() -> None:
    # Importing the modules registers their factories (once).
    from . import efficientnet_lite, tiny  # noqa: F401
