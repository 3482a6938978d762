"""Optimizer with one parameter group per backbone stage plus the head, all present from step 0."""
from __future__ import annotations

import torch

from ..heads import Classifier


def build_optimizer(model: Classifier, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; frozen groups simply get ``lr = 0`` so state keeps its shape across phases."""
    groups = [{"params": list(stage.parameters()), "lr": 0.0, "name": f"stage{i}"}
              for i, stage in enumerate(model.backbone.stages)]
    groups.append({"params": list(model.head.parameters()), "lr": 0.0, "name": "head"})
    # The fused kernel (CPU and CUDA) does one pass per tensor instead of a dozen: ~2 % of a step.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=weight_decay, fused=fused or None)


def set_learning_rates(optimizer: torch.optim.Optimizer, base_lr: float, multipliers: list[float]) -> None:
    for group, mult in zip(optimizer.param_groups, multipliers):
        group["lr"] = base_lr * mult
