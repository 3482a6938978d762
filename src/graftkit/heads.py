"""graftkit's head and the Classifier that joins it to a staged backbone."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .backbones import Backbone


class LinearHead(nn.Sequential):
    """Dropout then a freshly initialised linear layer: ``(B, num_features)`` → ``(B, num_classes)``."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__(nn.Dropout(dropout), nn.Linear(num_features, num_classes))


class Classifier(nn.Module):
    """A backbone plus a head, with per-stage freezing that ``model.train()`` cannot undo.

    Frozen stages stay in eval mode (their BatchNorm running statistics never move). Unfrozen
    stages keep BatchNorm in eval mode too unless ``train_bn`` is set: on small datasets the
    batch statistics are noisy and would drift away from the pretrained ones.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = LinearHead(backbone.num_features, num_classes, dropout)
        self.trainable_stages: list[bool] = [True] * backbone.num_stages
        self.train_bn = True

    @property
    def num_classes(self) -> int:
        return self.head[-1].out_features

    def set_trainable(self, trainable_stages: Sequence[bool], train_bn: bool) -> None:
        """Freeze/unfreeze each backbone stage (``requires_grad`` and train/eval mode)."""
        self.trainable_stages = list(trainable_stages)
        self.train_bn = train_bn
        for stage, trainable in zip(self.backbone.stages, self.trainable_stages):
            stage.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            for stage, trainable in zip(self.backbone.stages, self.trainable_stages):
                if not trainable:
                    stage.eval()
                elif not self.train_bn:
                    for module in stage.modules():
                        if isinstance(module, _BatchNorm):
                            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, num_classes)`` logits."""
        return self.head(self.backbone(x))


def start_from_imagenet(model: Classifier, classes: Sequence[str]) -> list[tuple[str, str]] | None:
    """Copy the rows of ``model.backbone``'s pretrained ImageNet classifier into the new head when every
    class names a different ImageNet class (``backbones.imagenet_classes``): training then starts from
    the zero-shot classifier of those classes. Returns ``[(class, ImageNet name), ...]``, or None (the
    head stays random: no ImageNet classifier, or a class that names none)."""
    from .backbones.imagenet_classes import describe, imagenet_rows

    kept = getattr(model.backbone, "imagenet_head", None)  # a plugin backbone may predate it
    if kept is None:
        return None
    rows = imagenet_rows(classes)
    if rows is None:
        return None
    weight, bias = kept
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(weight[rows])
        linear.bias.copy_(bias[rows])
    return [(name, describe(row)) for name, row in zip(classes, rows)]
