"""Backbones side by side as one: the architecture of a model made by ``graft ensemble``.

The name lists the members and the input size each was trained at, e.g.
``efficientnet_lite0@224+efficientnet_lite1@240``. The joined backbone takes images at the largest
size; a member trained at a smaller size gets them resized to its own (the same field of view, as
every member's evaluation crop is the centre 87.5 %). Its pooled features are the members' pooled
features, concatenated, so one linear head over them can average the members' logits, and
everything that takes a ``Classifier`` (predict, evaluate, serve, ONNX/TorchScript export) takes the
ensemble as it is.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import Backbone

SEPARATOR, SIZE_MARK = "+", "@"


class SideBySide(nn.Module):
    """``(B, 3, S, S)`` → the members' pooled features ``(B, sum of num_features)``, each member
    fed the images at its own size."""

    def __init__(self, members: Sequence[Backbone], sizes: Sequence[int]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sizes = [int(s) for s in sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for member, size in zip(self.members, self.sizes):
            fed = x if tuple(x.shape[-2:]) == (size, size) else \
                F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            pooled.append(member(fed))
        return torch.cat(pooled, 1)


def ensemble_name(members: Sequence[tuple[str, int]]) -> str:
    return SEPARATOR.join(f"{name}{SIZE_MARK}{size}" for name, size in members)


def parse_ensemble_name(name: str) -> list[tuple[str, int]] | None:
    """``[(backbone, image size), ...]`` of an ensemble's name; None for any other name."""
    if SEPARATOR not in name:
        return None
    members = []
    for part in name.split(SEPARATOR):
        backbone, mark, size = part.rpartition(SIZE_MARK)
        if not mark or not backbone or not size.isdigit() or int(size) < 16:
            raise ConfigError(f"backbone {name!r}: an ensemble's members are written name@size, joined by "
                              f"'{SEPARATOR}' (e.g. efficientnet_lite0@224+efficientnet_lite1@240); got {part!r}")
        members.append((backbone, int(size)))
    return members


def join_backbones(members: Sequence[Backbone], sizes: Sequence[int]) -> Backbone:
    """One backbone from ``members`` (each trained at ``sizes[i]``); their normalisation must agree."""
    first = members[0]
    for member in members[1:]:
        if (member.mean, member.std) != (first.mean, first.std):
            raise ConfigError(f"backbones {first.name} and {member.name} normalise images differently "
                              f"(mean/std {first.mean}/{first.std} against {member.mean}/{member.std}): "
                              f"they cannot share one input.")
    name = ensemble_name([(m.name, s) for m, s in zip(members, sizes)])
    return Backbone([SideBySide(members, sizes)], ["members"], sum(m.num_features for m in members),
                    first.mean, first.std, max(sizes), name, pool=nn.Identity(),
                    pretrained=all(m.pretrained for m in members))


def build_ensemble(name: str, create) -> Backbone | None:
    """The architecture ``name`` describes (weights random: a model.safetensors fills them), or None."""
    members = parse_ensemble_name(name)
    if members is None:
        return None
    return join_backbones([create(backbone, pretrained=False) for backbone, _ in members], [s for _, s in members])
