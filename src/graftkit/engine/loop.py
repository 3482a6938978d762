"""The training loop: one epoch of training, one pass of evaluation. Nothing hidden."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import torch
from torch import nn

from .. import metrics
from ..errors import GraftError


class TrainingDiverged(GraftError):
    """The loss became NaN or infinite."""


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    non_blocking = device.type == "cuda"
    return (images.to(device, memory_format=memory_format, non_blocking=non_blocking),
            labels.to(device, non_blocking=non_blocking))


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    set_lr: Callable[[int], float], loss_fn: nn.Module, device: torch.device,
                    channels_last: bool = True, on_step: Callable[[float], None] | None = None,
                    autocast: Callable = contextlib.nullcontext, mix: Callable | None = None) -> dict:
    """Train over ``loader`` once; ``set_lr(step)`` sets this step's learning rates first.

    ``mix(images, labels) -> (images, soft targets)`` is MixUp/CutMix on the batch, if any.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        set_lr(step)
        images, labels = to_device(images, labels, device, channels_last)
        targets = labels
        if mix is not None:  # soft targets for the loss; accuracy still counts the original labels
            images, targets = mix(images, labels)
        with autocast():
            logits = model(images)
            loss = loss_fn(logits.float(), targets)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss.item()} at step {step}; "
                                   f"lower the learning rate (--lr / --finetune-lr).")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if on_step is not None:
            on_step(loss.item())
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "images_per_second": seen / max(time.perf_counter() - started, 1e-9)}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, channels_last: bool = True,
                   autocast: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, num_classes)`` logits and ``(N,)`` labels over ``loader``, in order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        images, labels = to_device(images, labels, device, channels_last)
        with autocast():
            logits = model(images)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, channels_last: bool = True,
             autocast: Callable = contextlib.nullcontext) -> dict:
    """Validation loss (plain cross-entropy), accuracy, and the probabilities behind them; the
    figures come from :mod:`graftkit.metrics`, as ``graft evaluate``'s do."""
    logits, labels = predict_logits(model, loader, device, channels_last, autocast)
    probs = logits.softmax(1)
    return {"val_loss": metrics.log_loss(labels.numpy(), probs.numpy()),
            "val_accuracy": metrics.accuracy(labels.numpy(), probs.argmax(1).numpy()), "probs": probs,
            "labels": labels, "logits": logits}
