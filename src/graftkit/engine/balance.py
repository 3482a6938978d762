"""Class imbalance: which remedy a run uses (``--balance``), the loss weights and the sampling weights.

``weights`` scales each image's loss by its class's inverse frequency; ``sampler`` draws the training
images of an epoch with replacement, each class equally likely (torch's ``WeightedRandomSampler``,
from the batches' own seeded generator, so every rank draws the same order under DDP). ``auto``
uses :data:`AUTO_METHOD` when the largest class of the train split has at least
:data:`IMBALANCE_RATIO` times the images of the smallest, else nothing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

IMBALANCE_RATIO = 3.0      # max/min train images per class from which the data counts as imbalanced
# What --balance auto uses there. Long-tailed flowers (10x, 3 seeds, BENCHMARKS.md): weights +2.8 points of
# balanced accuracy [1.8, 3.8], sampler +3.5 [0.3, 6.7]; not separable, and weights gain steadily.
AUTO_METHOD = "weights"


@dataclass(frozen=True)
class Balance:
    """What a run does about class imbalance: ``method`` is ``none``, ``weights`` or ``sampler``."""

    requested: str
    method: str
    ratio: float  # images of the largest class / of the smallest, train split

    @property
    def imbalanced(self) -> bool:
        """Imbalanced data: the best epoch is chosen by balanced accuracy, not accuracy."""
        return self.ratio >= IMBALANCE_RATIO

    @property
    def best_by(self) -> str:
        return "val_balanced_accuracy" if self.imbalanced else "val_accuracy"

    def describe(self) -> str | None:
        """The line the run prints, or None on balanced data with nothing asked (the output stays as it was)."""
        if not self.imbalanced and self.method == "none":
            return None
        state = f"classes imbalanced (max/min {self.ratio:.1f}×)" if self.imbalanced else \
            f"classes balanced (max/min {self.ratio:.1f}×)"
        best = "balanced accuracy" if self.imbalanced else "accuracy"
        return f"{state}: balance={self.method}; best epoch chosen by {best}"

    def to_dict(self) -> dict:
        return {"requested": self.requested, "method": self.method, "max_min_ratio": round(self.ratio, 3),
                "imbalanced": self.imbalanced, "best_epoch_by": self.best_by}


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    counts = Counter(labels)
    return [counts.get(c, 0) for c in range(num_classes)]


def resolve_balance(requested: str, labels: Sequence[int], num_classes: int) -> Balance:
    """The remedy for ``requested`` (``none | weights | sampler | auto``) on training ``labels``."""
    present = [n for n in class_counts(labels, num_classes) if n > 0]
    ratio = max(present) / min(present) if present else 1.0
    method = requested
    if requested == "auto":
        method = AUTO_METHOD if ratio >= IMBALANCE_RATIO else "none"
    return Balance(requested, method, ratio)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``(C,)`` inverse-frequency weights ``N / (C_present * n_c)``: their mean over the training images
    is 1, so the loss keeps its scale (and the learning rate its meaning). A class without training
    images gets weight 0."""
    counts = torch.tensor(class_counts(labels, num_classes), dtype=torch.float32)
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.zeros(()))


def sample_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``(N,)`` sampling weights that make each class equally likely (``1 / n_class`` per image)."""
    counts = torch.tensor(class_counts(labels, num_classes), dtype=torch.float64)
    return 1.0 / counts[torch.as_tensor(list(labels), dtype=torch.long)]


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy (with label smoothing) where each image's whole loss is scaled by its class weight.

    The per-image loss, smoothed part included, is weighted by the true class's weight (by the target
    mix of weights for MixUp/CutMix soft targets), then averaged over the batch. PyTorch's own
    ``weight=`` instead weights the smoothing terms by the class of each logit and divides by the
    batch's weight sum, which does not split into parts (``--accumulate``, ranks) as a plain mean does.
    """

    def __init__(self, weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, C)``; ``targets`` ``(B,)`` class indices or ``(B, C)`` probabilities."""
        losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)
        weight = self.weight.to(logits.device)
        per_image = weight[targets] if targets.dim() == 1 else targets.float() @ weight
        return (losses * per_image).mean()


def build_loss(balance: Balance, labels: Sequence[int], num_classes: int, label_smoothing: float) -> nn.Module:
    """The training loss: plain cross-entropy, or weighted by class (``balance.method == "weights"``)."""
    if balance.method == "weights":
        return WeightedCrossEntropy(class_weights(labels, num_classes), label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
