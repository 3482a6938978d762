"""Building backbones by name: the registered factories (the built-ins are imported here, which
registers them) or any timm model."""
from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import ConfigError
from . import efficientnet_lite, tiny  # noqa: F401  (importing them registers their factories)
from .ensemble import build_ensemble, parse_ensemble_name
from .registry import Backbone, BackboneInfo, registered, registered_backbones
from .timm_models import create_timm_backbone, timm_model_exists
from .weights import load_weights_into, read_state_dict


def list_backbones() -> list[BackboneInfo]:
    """The registered backbones, in registration order."""
    return registered_backbones()


def native_image_size(name: str) -> int:
    """The input size a backbone was trained at, without building it."""
    members = parse_ensemble_name(name)
    if members is not None:
        return max(size for _, size in members)
    info = registered(name)
    if info is not None:
        return info.image_size
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
    if weights is None:  # name@size+name@size: a model from `graft ensemble` (its weights: model.safetensors)
        joined = build_ensemble(name, create_backbone)
        if joined is not None:
            return joined
    if weights is not None:
        state = read_state_dict(weights)
        if any(k.startswith("stages.") for k in state):  # saved by graftkit (e.g. `graft pretrain`)
            backbone = create_backbone(name, pretrained=False)
            load_weights_into(backbone, state, str(weights))
            backbone.pretrained = True
            return backbone
    info = registered(name)
    if info is not None:
        return info.factory(pretrained=pretrained and weights is None, weights=weights)
    if timm_model_exists(name):
        return create_timm_backbone(name, pretrained=pretrained and weights is None, weights=weights)
    close = difflib.get_close_matches(name, [b.name for b in registered_backbones()], n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown backbone {name!r}: not in graftkit's registry nor in timm.{hint} "
                      f"Run 'graft backbones' for the list.")
