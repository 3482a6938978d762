"""Freezing as a pure function of the epoch.

A strategy becomes a list of :class:`Phase`; ``phase_at(phases, epoch)`` says which stages train
and at what learning rate. A resumed run computes the same state as one that never stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Phase:
    name: str              # "head", "finetune" or "scratch"
    epochs: int
    lr: float              # peak learning rate of the head in this phase
    first_trainable: int | None  # first unfrozen backbone stage; None: backbone frozen
    train_bn: bool
    stage_lr_decay: float = 1.0  # learning-rate factor per stage, going down from the head

    def trainable_stages(self, num_stages: int) -> list[bool]:
        if self.first_trainable is None:
            return [False] * num_stages
        return [i >= self.first_trainable for i in range(num_stages)]

    def lr_multipliers(self, num_stages: int) -> list[float]:
        """One multiplier per stage, then 1.0 for the head; 0 for frozen stages."""
        trainable = self.trainable_stages(num_stages)
        stage = [self.stage_lr_decay ** (num_stages - i) if t else 0.0 for i, t in enumerate(trainable)]
        return [*stage, 1.0]

    def describe(self, num_stages: int) -> str:
        if self.first_trainable is None:
            return f"{self.name}: backbone frozen, head at {self.lr:.1e}"
        frozen = f"stages 0-{self.first_trainable - 1} frozen, " if self.first_trainable > 0 else ""
        mults = self.lr_multipliers(num_stages)
        low = mults[self.first_trainable]
        return (f"{self.name}: {frozen}stages {self.first_trainable}-{num_stages - 1} at "
                f"{low:.2g}x-{mults[num_stages - 1]:.2g}x, head at {self.lr:.1e}"
                f"{', BN training' if self.train_bn else ', BN frozen'}")


def build_phases(cfg: TrainConfig, num_stages: int) -> list[Phase]:
    if cfg.strategy == "scratch":
        return [Phase("scratch", cfg.epochs, cfg.lr, 0, train_bn=True)]
    if cfg.strategy == "feature-extraction":
        return [Phase("head", cfg.epochs, cfg.lr, None, train_bn=False)]
    if cfg.freeze >= num_stages:
        raise ConfigError(f"--freeze {cfg.freeze} keeps every stage frozen: backbone "
                          f"{cfg.backbone!r} has {num_stages} stages. Use 0..{num_stages - 1}, "
                          f"or --strategy feature-extraction.")
    phases = []
    if cfg.head_epochs:
        phases.append(Phase("head", cfg.head_epochs, cfg.lr, None, train_bn=False))
    if cfg.finetune_epochs:
        phases.append(Phase("finetune", cfg.finetune_epochs, cfg.finetune_lr, cfg.freeze, cfg.train_bn,
                            cfg.stage_lr_decay))
    return phases


def phase_at(phases: list[Phase], epoch: int) -> tuple[int, Phase, int]:
    """``(phase index, phase, epoch within the phase)`` for a global epoch index."""
    start = 0
    for index, phase in enumerate(phases):
        if epoch < start + phase.epochs:
            return index, phase, epoch - start
        start += phase.epochs
    raise ConfigError(f"epoch {epoch} is past the last phase ({start} epochs in all)")


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Learning-rate factor in [0, 1]: linear warmup, then cosine decay to zero."""
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
