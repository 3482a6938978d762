"""Any timm model as a staged :class:`Backbone`.

Known families (EfficientNet/MobileNet, ResNet, ConvNeXt) are split into their natural stages; any
other model becomes one stage. Hub weights need the network; offline, use ``--weights FILE``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .imagenet_classes import IMAGENET_CLASSES
from .registry import IMAGENET_MEAN, IMAGENET_STD, Backbone, registered_backbones
from .weights import load_weights_into, read_state_dict


def timm_model_exists(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return timm.is_model(name)


class _PooledTimm(nn.Module):
    """Fallback for models that are not a plain stack: features + timm's own pooling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def split_timm_model(model: nn.Module, name: str, mean, std, image_size: int,
                     pretrained: bool) -> Backbone:
    """Cut a timm classifier into ordered stages; the head is left out (graftkit adds its own), and kept
    aside as the backbone's ``imagenet_head`` when the weights are pretrained and it has 1000 classes."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    imagenet_head = None
    if pretrained and isinstance(classifier, nn.Linear) and classifier.out_features == IMAGENET_CLASSES:
        bias = classifier.bias if classifier.bias is not None else torch.zeros(IMAGENET_CLASSES)
        imagenet_head = (classifier.weight.detach(), bias.detach())  # the cut classifier's own tensors: no copy
    backbone = _split(model, name, mean, std, image_size, pretrained)
    if imagenet_head is not None and imagenet_head[0].shape[1] == backbone.num_features:
        backbone.imagenet_head = imagenet_head
    return backbone


def _split(model: nn.Module, name: str, mean, std, image_size: int, pretrained: bool) -> Backbone:
    num_features = model.num_features
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        blocks = list(model.blocks)
        stages = [nn.Sequential(model.conv_stem, model.bn1, blocks[0]), *blocks[1:-1],
                  nn.Sequential(blocks[-1], model.conv_head, model.bn2)]
        names = ["stem+blocks.0", *(f"blocks.{i}" for i in range(1, len(blocks) - 1)),
                 f"blocks.{len(blocks) - 1}+head"]
        return Backbone(stages, names, num_features, mean, std, image_size, name, pretrained=pretrained)
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4")):
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool, model.layer1)
        stages = [stem, model.layer2, model.layer3, model.layer4]
        return Backbone(stages, ["stem+layer1", "layer2", "layer3", "layer4"], num_features, mean, std,
                        image_size, name, pretrained=pretrained)
    if all(hasattr(model, a) for a in ("stem", "stages", "norm_pre")) and isinstance(model.stages, nn.Sequential):
        parts = list(model.stages)
        stages = [nn.Sequential(model.stem, parts[0]), *parts[1:-1], nn.Sequential(parts[-1], model.norm_pre)]
        names = [f"stages.{i}" for i in range(len(parts))]
        head_norm = getattr(getattr(model, "head", None), "norm", None)
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *( [head_norm] if head_norm is not None else []),
                             nn.Flatten(1))
        return Backbone(stages, names, num_features, mean, std, image_size, name, pool=pool,
                        pretrained=pretrained)
    model.reset_classifier(0)
    return Backbone([_PooledTimm(model)], ["all"], num_features, mean, std, image_size, name,
                    pool=nn.Identity(), pretrained=pretrained)


def create_timm_backbone(name: str, pretrained: bool, weights: str | Path | None) -> Backbone:
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # hub errors come in many types (HTTP, OS, HF)
        offline = ", ".join(b.name for b in registered_backbones() if b.offline)
        raise ConfigError(f"could not get pretrained weights for timm model {name!r} "
                          f"({type(exc).__name__}: no network?). Offline backbones: {offline}. "
                          f"Or pass a local file with --weights FILE (.safetensors or .pth), "
                          f"or --no-pretrained.") from None
    if weights is not None:
        load_weights_into(model, read_state_dict(weights), str(weights))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.get("mean", IMAGENET_MEAN)
    std = cfg.get("std", IMAGENET_STD)
    image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return split_timm_model(model, name=name, mean=mean, std=std, image_size=image_size,
                            pretrained=pretrained or weights is not None)
