"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``).

Train from the start of a phase while the learning rate grows exponentially from ``start_lr`` to
``end_lr`` over ``num_steps`` steps; record the loss, smooth it, and stop once it diverges. For the
head phase the frozen backbone's features come from the feature cache, so this takes seconds.

The suggestion is the learning rate at the minimum of the smoothed loss divided by 10 (the loss
is still falling fast there, safely before the blow-up); the steepest descent is reported too.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError
from .progress import ProgressReporter

PHASES = ("auto", "head", "full")
METHOD = ("suggestion = learning rate at the minimum of the smoothed loss / 10; steepest descent = where "
          "the smoothed loss falls fastest per decade of learning rate (shown for reference). Loss smoothed "
          "with an exponential moving average (beta 0.98, bias-corrected); the test stops once it exceeds "
          "4x its minimum.")


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    minimum_lr: float
    steepest_lr: float | None
    phase: str
    start_lr: float
    end_lr: float
    num_steps: int
    stopped: str
    seconds: float
    flag: str = "--lr"  # the training flag the suggestion is for
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` learning rates growing exponentially from ``start_lr`` to ``end_lr``."""
    return start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / max(1, num_steps - 1))


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float | None]:
    """``(suggestion, lr at the minimum, lr of steepest descent)`` from a smoothed loss curve.

    The suggestion is ``lr_at_minimum / 10``, never below the first tested rate.
    """
    lrs_arr, loss = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    finite = np.isfinite(loss)
    if not finite.any():
        raise ConfigError("the learning-rate test produced no finite loss; lower --start-lr")
    lowest = int(np.nanargmin(np.where(finite, loss, np.inf)))
    minimum = float(lrs_arr[lowest])
    steepest = None
    skip = max(1, len(loss) // 10)  # the first steps barely move: their slope is noise
    if lowest - skip >= 2:
        slope = np.gradient(loss[skip:lowest + 1], np.log10(lrs_arr[skip:lowest + 1]))
        steepest = float(lrs_arr[skip + int(np.argmin(slope))])
    return max(minimum / 10, float(lrs_arr[0])), minimum, steepest


def lr_range_test(cfg: TrainConfig, scan: Any = None, phase: str = "auto", start_lr: float = 1e-7,
                  end_lr: float = 10.0, num_steps: int = 100, beta: float = 0.98, diverge_factor: float = 4.0,
                  report: ProgressReporter | None = None) -> LRFindResult:
    """Run the range test for ``cfg`` (its data, backbone, strategy, batch size and seed).

    Args:
        phase: ``head`` (backbone frozen, on cached features), ``full`` (every stage trained, as
            ``scratch``), or ``auto``: ``full`` for scratch, else ``head`` (the phase ``--lr`` sets).
    """
    from ..strategies import Phase, build_optimizer, set_learning_rates
    from .loop import to_device
    from .prepare import prepare
    from .runtime import autocast_for, seed_everything

    if phase not in PHASES:
        raise ConfigError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ConfigError(f"need finite 0 < start_lr < end_lr (--start-lr, --end-lr); got {start_lr:g} and "
                          f"{end_lr:g} (the defaults are 1e-07 and 10)")
    if num_steps < 10:
        raise ConfigError(f"num_steps must be >= 10 for a usable curve; got {num_steps}")
    phase = ("full" if cfg.strategy == "scratch" else "head") if phase == "auto" else phase
    started = time.perf_counter()
    report = report or ProgressReporter(cfg.progress)
    seed_everything(cfg.seed)
    scratch_cache = None if cfg.cache else Path(tempfile.mkdtemp(prefix="graftkit-nocache-"))
    try:
        prepared = prepare(cfg, scan, scratch_cache or cfg.cache_dir)
        data, model, device, precision = prepared.data, prepared.model, prepared.device, prepared.precision
        backbone = model.backbone
        flag = "--lr"
        if phase == "head":  # the phase --lr sets for feature-extraction and fine-tune
            test_phase = Phase("head", 1, 1.0, None, train_bn=False)
        elif cfg.strategy == "scratch":
            test_phase = Phase("scratch", 1, 1.0, 0, train_bn=True)
        else:  # fine-tune's unfrozen phase, with its per-stage factors (from a fresh head: a rough guide)
            test_phase = Phase("finetune", 1, 1.0, cfg.freeze, cfg.train_bn, cfg.stage_lr_decay)
            flag = "--finetune-lr"
        model.set_trainable(test_phase.trainable_stages(backbone.num_stages), test_phase.train_bn)
        net, batches, _ = data.batches_for(test_phase, model, device, precision, report)
        if len(batches) == 0:
            raise ConfigError("no training batches: the training split is empty")
        head_only = phase == "head"
        autocast = autocast_for(device, "fp32" if head_only else precision)
        optimizer = build_optimizer(model, cfg.weight_decay)
        multipliers = test_phase.lr_multipliers(backbone.num_stages)
        loss_fn = data.build_loss().to(device)  # as the run will train: weighted under --balance weights
        schedule = lr_schedule(start_lr, end_lr, num_steps)
        lrs, losses, smoothed = [], [], []
        average, best, stopped, epoch = 0.0, math.inf, "completed", 0
        report.start_epoch(f"lr-find ({phase})", num_steps)
        net.train()
        while len(lrs) < num_steps and stopped == "completed":
            batches.set_epoch(epoch)
            epoch += 1
            for images, labels in batches:
                step = len(lrs)
                if step >= num_steps:
                    break
                set_learning_rates(optimizer, float(schedule[step]), multipliers)
                images, labels = to_device(images, labels, device, cfg.channels_last)
                with autocast():
                    loss = loss_fn(net(images).float(), labels)
                value = loss.item()
                lrs.append(float(schedule[step]))
                losses.append(value)
                if not math.isfinite(value):
                    smoothed.append(float("nan"))
                    stopped = f"diverged (non-finite loss) at step {step + 1}"
                    break
                average = beta * average + (1 - beta) * value
                smooth = average / (1 - beta ** (step + 1))
                smoothed.append(smooth)
                best = min(best, smooth)
                report.step(value)
                if step > num_steps // 10 and smooth > diverge_factor * best:
                    stopped = f"diverged (smoothed loss > {diverge_factor:g}x its minimum) at step {step + 1}"
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        suggestion, minimum, steepest = suggest_lr(lrs, smoothed)
        report.end_epoch(f"lr-find: {len(lrs)} steps from {start_lr:.0e} to {lrs[-1]:.1e}, {stopped}")
        if stopped != "completed" and minimum == lrs[0]:  # it never fell before it blew up
            raise ConfigError(f"the learning-rate test {stopped} (lr {lrs[-1]:.1e}) and the loss never fell "
                              f"before that: no usable range was measured. Lower --start-lr (default 1e-07).")
        return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion, minimum_lr=minimum,
                            steepest_lr=steepest, phase=phase, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                            stopped=stopped, seconds=round(time.perf_counter() - started, 3), flag=flag)
    finally:
        if scratch_cache is not None:
            shutil.rmtree(scratch_cache, ignore_errors=True)

