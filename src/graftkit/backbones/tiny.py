"""``tiny_cnn``: a four-stage toy CNN so tests never need weights or the network."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, Backbone, register_backbone
from .weights import load_weights_into, read_state_dict


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@register_backbone("tiny_cnn", offline=True, image_size=32, description="4-stage toy CNN for tests (random init only)")
def tiny_cnn(pretrained: bool = True, weights: str | Path | None = None) -> Backbone:
    # "pretrained" has no meaning here: there are no weights to ship for a toy.
    stages = [_block(3, 8, 2), _block(8, 16, 2), _block(16, 24, 2), _block(24, 32, 1)]
    backbone = Backbone(stages, ["s0", "s1", "s2", "s3"], 32, IMAGENET_MEAN, IMAGENET_STD,
                        image_size=32, name="tiny_cnn", pretrained=weights is not None)
    if weights is not None:
        load_weights_into(backbone.stages, read_state_dict(weights), str(weights))
    return backbone
