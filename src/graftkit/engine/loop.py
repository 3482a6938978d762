"""The training loop: one epoch of training, one pass of evaluation. Nothing hidden."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import torch
from torch import nn

from .. import metrics
from ..errors import GraftError
from .distributed import gradient_sync


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
                    autocast: Callable = contextlib.nullcontext, mix: Callable | None = None,
                    accumulate: int = 1, sum_over_ranks: Callable[[list], list] = list,
                    stop_on_nan: bool = True, average=None) -> dict:
    """Train over ``loader`` once; ``set_lr(step)`` sets this step's learning rates first.

    ``mix(images, labels) -> (images, soft targets)`` is MixUp/CutMix on the batch, if any.
    ``accumulate``: each batch runs as that many parts, one optimizer step per batch. Each part's
    loss weighs its share of the step's global batch (``loader.step_share`` images per rank), so
    the gradient is the batch mean whether the batch ran whole, in parts, or on several ranks.
    ``sum_over_ranks`` sums the epoch's figures over the ranks (distributed data parallel).
    ``average``: an EMA of the weights (:class:`~graftkit.engine.ema.WeightAverage`, ``--ema``), updated
    after every optimizer step.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    share = getattr(loader, "step_share", None)
    for step, (images, labels) in enumerate(loader):
        set_lr(step)
        optimizer.zero_grad(set_to_none=True)
        batch_share = share or len(labels)  # this rank's images of the step's global batch
        parts = list(zip(images.tensor_split(accumulate), labels.tensor_split(accumulate)))
        for part, (part_images, part_labels) in enumerate(parts):
            part_images, part_labels = to_device(part_images, part_labels, device, channels_last)
            targets = part_labels
            if mix is not None:  # soft targets for the loss; accuracy still counts the original labels
                part_images, targets = mix(part_images, part_labels)
            with gradient_sync(model, now=part == len(parts) - 1):  # DDP: all-reduce after the last part
                with autocast():
                    logits = model(part_images)
                    loss = loss_fn(logits.float(), targets)
                if stop_on_nan and not torch.isfinite(loss):
                    raise TrainingDiverged(f"the training loss became {loss.item()} at step {step}; "
                                           f"lower the learning rate (--lr / --finetune-lr).")
                (loss * (len(part_labels) / batch_share)).backward()
            total_loss += loss.item() * len(part_labels)
            correct += (logits.argmax(1) == part_labels).sum().item()
            seen += len(part_labels)
        optimizer.step()
        if average is not None:
            average.update()
        if on_step is not None:
            on_step(loss.item())
    total_loss, correct, seen = sum_over_ranks([total_loss, correct, seen])
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1), "images": int(seen),
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
             autocast: Callable = contextlib.nullcontext, gather: Callable = lambda rows: rows) -> dict:
    """Validation loss (plain cross-entropy), accuracy, balanced accuracy, macro-F1, and the
    probabilities behind them; the
    figures come from :mod:`graftkit.metrics`, as ``graft evaluate``'s do.

    ``gather`` collects the rows of every rank's share of the images (distributed data parallel),
    so each image is scored exactly once."""
    logits, labels = predict_logits(model, loader, device, channels_last, autocast)
    logits, labels = gather(logits), gather(labels)
    probs = logits.softmax(1)
    preds = probs.argmax(1).numpy()
    return {"val_loss": metrics.log_loss(labels.numpy(), probs.numpy()),
            "val_accuracy": metrics.accuracy(labels.numpy(), preds),
            "val_balanced_accuracy": metrics.balanced_accuracy(labels.numpy(), preds),
            "val_macro_f1": metrics.macro_f1(labels.numpy(), preds), "probs": probs,
            "labels": labels, "logits": logits}
