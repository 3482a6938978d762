"""``fit(cfg)``: scan the data, build the model, run the phases, write the run folder."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._version import __version__
from ..config import TrainConfig
from ..data import DataScan, build_batch_mix, build_eval_transform, decode_size_for
from ..data.conflicts import label_conflicts_csv, label_conflicts_warning
from ..data.preview import GRID_NAME
from ..errors import CheckpointError, ConfigError, GraftError
from ..fileio import refuse_out_inside_data
from ..heads import Classifier
from ..strategies import Phase, build_optimizer, build_phases, phase_at, set_learning_rates, warmup_cosine
from .checkpoint import (CHECKPOINT_NAME, atomic_write_text, capture_rng, load_checkpoint, load_model,
                         restore_rng, save_checkpoint, save_model)
from .confidence import fit_confidence
from .distributed import World, join
from .ema import WeightAverage
from .features import TailModel, capture_pooled
from .fusion import fold_frozen_batchnorm
from .loop import TrainingDiverged, evaluate, train_one_epoch
from .prepare import TrainingData, prepare
from .progress import ProgressReporter
from .runtime import CoreLoad, autocast_for, phase_threads, seed_everything, torch_threads
from .tracking import NO_TRACKER, Observers, Tracker, build_tracker, require_tracker

class Interrupted(GraftError):
    """Ctrl-C or SIGTERM: the run stopped cleanly and can be resumed."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the training loop is, so it stops as Ctrl-C does."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """While training, SIGTERM (``kill``, a scheduler's timeout) stops the run like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Run:
    """A finished training run: where it lives and what it produced (the best epoch's model)."""

    out_dir: Path
    config: TrainConfig
    classes: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: Classifier


def default_out_dir(strategy: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{strategy}"


def prepare_out_dir(cfg: TrainConfig) -> Path:
    out = cfg.out_dir or default_out_dir(cfg.strategy)
    refuse_out_inside_data(out, cfg.data_dir)
    if cfg.resume:
        if (out / "metrics.json").exists():
            raise ConfigError(f"'{out}' holds a finished run; nothing to resume.")
        return out
    if (out / "model.safetensors").exists() or (out / "metrics.json").exists() or (out / "checkpoint.pt").exists():
        resume = (f" Continue it with: graft train --resume {out}"
                  if (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists() else "")
        raise ConfigError(f"'{out}' already holds a run; pass another --out (nothing was overwritten).{resume}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".graftkit-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder '{out}' ({exc.strerror or exc}). "
                          f"Pass a writable --out.") from None
    return out


def model_meta(cfg: TrainConfig, model: Classifier, classes: list[str], image_size: int,
               precision: str) -> dict[str, Any]:
    backbone = model.backbone
    return {
        "classes": classes, "backbone": backbone.name, "num_features": backbone.num_features,
        "head": {"type": "linear", "dropout": cfg.dropout},
        "preprocessing": {"image_size": image_size, "resize": decode_size_for(image_size),
                          "crop": "center", "mean": list(backbone.mean), "std": list(backbone.std),
                          "scale": "0-1 then normalise"},
        "precision": precision, "fold_bn": cfg.fold_bn, "split": {"val_fraction": cfg.val_fraction, "seed": cfg.resolved_split_seed},
        "strategy": cfg.strategy, "graftkit_version": __version__,
    }


def fit(cfg: TrainConfig, scan: DataScan | None = None, observers: Sequence[Tracker] = ()) -> Run:
    """Train a classifier as ``cfg`` says and write the run folder.

    Args:
        cfg: the resolved configuration.
        scan: an already validated data scan (else ``scan_data`` runs first).
        observers: read each epoch's row and the final metrics after the ``--track`` tracker, on
            rank 0 (:class:`~graftkit.engine.tracking.Tracker`); one may stop the run by raising
            from ``on_epoch_end`` (a sweep's pruner), which ``fit`` passes on.

    One run, one model: measuring the freeze depth first (``cfg.freeze_auto``) is a workflow
    above this one (:func:`graftkit.workflows.freeze_auto.train_run`, or ``graftkit.train``).
    """
    if cfg.freeze_auto:
        raise ConfigError("freeze_auto trains several runs: call graftkit.train(...) or "
                          "graftkit.workflows.freeze_auto.fit_auto_freeze(cfg), not fit(cfg)")
    refuse_out_inside_data(cfg.out_dir or default_out_dir(cfg.strategy), cfg.data_dir)  # before the scan
    require_tracker(cfg.track)
    started = time.perf_counter()
    world = join(cfg.device)  # alone, or one of the ranks torchrun started (distributed data parallel)
    seed_everything(cfg.seed)  # the same on every rank: the same initial weights everywhere
    report = ProgressReporter(cfg.progress if world.is_main else "none")  # rank 0 speaks for the run
    # without the cache, a scratch folder for this run only (rank 0's, shared by all ranks)
    scratch_cache = None if cfg.cache else Path(world.from_main(
        tempfile.mkdtemp(prefix="graftkit-nocache-") if world.is_main else None))
    try:
        with _sigterm_interrupts():
            return _fit(cfg, scan, report, started, scratch_cache or cfg.cache_dir, world, observers)
    finally:
        report.close()
        if scratch_cache is not None:
            shutil.rmtree(scratch_cache, ignore_errors=True)


def _fit(cfg: TrainConfig, scan: DataScan | None, report: ProgressReporter, started: float,
         cache_dir: Path, world: World, observers: Sequence[Tracker] = ()) -> Run:
    prepared = prepare(cfg, scan, cache_dir, world)
    data, model, device, precision = prepared.data, prepared.model, prepared.device, prepared.precision
    scan, backbone = data.scan, model.backbone
    if world.size > 1:  # each rank its own dropout and augmentation draws (the weights are the same)
        seed_everything(cfg.seed + world.rank)
    # rank 0 writes the run folder; every rank reads from it (--resume)
    out_dir = world.from_main(_prepare_run_dir(cfg, data, report, precision) if world.is_main else None)
    tracker = Observers([build_tracker(cfg, out_dir), *observers]) if world.is_main else NO_TRACKER  # rank 0 only
    try:
        return _train(cfg, data, model, device, precision, report, started, world, out_dir, tracker,
                      prepared.head_init)
    except BaseException as exc:
        tracker.close(exc)
        raise


def _train(cfg: TrainConfig, data: TrainingData, model: Classifier, device: torch.device, precision: str,
           report: ProgressReporter, started: float, world: World, out_dir: Path, tracker: Tracker,
           head_init: list[tuple[str, str]] | None = None) -> Run:
    scan, backbone = data.scan, model.backbone
    phases = build_phases(cfg, backbone.num_stages)
    optimizer = build_optimizer(model, cfg.weight_decay)
    balance = data.balance
    loss_fn = data.build_loss().to(device)
    report.message(f"{cfg.strategy} · {backbone.name} ({'pretrained' if backbone.pretrained else 'random init'}) "
                   f"· {len(scan.classes)} classes · {len(scan.train)} train / {len(scan.val)} val images "
                   f"· {data.image_size}px · {device.type} {precision}{world.describe()} · {_epochs_text(cfg)} · decoded "
                   f"{data.decoded.decoded_now} new image(s) → {out_dir}")
    if balance.describe():
        report.message(balance.describe())
    if head_init and not cfg.resume:
        report.message(head_init_text(head_init))
    meta = model_meta(cfg, model, scan.classes, data.image_size, precision)
    state = _restore(cfg, out_dir, scan.classes, model, optimizer, report, world.is_main)
    history, best, best_state, resumed = state["history"], state["best"], state["best_state"], state["resumed"]
    start_epoch = epoch = state["epoch"]
    started -= state["elapsed"]  # wall-clock figures (elapsed, seconds_total, max_seconds) go on after a resume
    diverged, setup_seconds, last_checkpoint, stopped, average = [], 0.0, time.perf_counter(), None, None
    checkpoint_epoch = start_epoch if cfg.resume else None
    load, busy_threads = CoreLoad(), None  # other programs' use of the cores, read before each backbone epoch
    try:
        while epoch < cfg.total_epochs:
            phase_index, phase, phase_epoch = phase_at(phases, epoch)
            epoch_start = time.perf_counter()
            if phase_epoch == 0 or epoch == start_epoch:  # the one place freezing changes
                model.set_trainable(phase.trainable_stages(backbone.num_stages), phase.train_bn)
                report.message(f"phase {phase_index + 1}/{len(phases)} · {phase.describe(backbone.num_stages)}")
                net, train_batches, val_batches = data.batches_for(phase, model, device, precision, report)
                setup_seconds = time.perf_counter() - epoch_start  # feature caching counts to the phase
                head_only = isinstance(net, TailModel) and net.cut == backbone.num_stages
                # MixUp/CutMix need whole images: not on cached features
                mix = None if isinstance(net, TailModel) else build_batch_mix(cfg.mixup, cfg.cutmix,
                                                                              len(scan.classes))
                autocast = autocast_for(device, "fp32" if head_only else precision)
                if cfg.compile and not head_only:
                    net = torch.compile(net)
                trained = world.wrap(net)  # DDP: gradients all-reduced over the ranks (alone: net)
                # --ema: an average of the weights for each phase that trains the backbone
                average = WeightAverage(model, cfg.ema_decay) if cfg.ema and phase.first_trainable is not None else None
            if resumed is not None:  # continue every random stream exactly where it stopped
                restore_rng(_rank_rng(resumed, world))
                if phase_epoch != 0:
                    train_batches.generator.set_state(resumed["batch_generator"])
                    if average is not None:
                        average.load_state_dict(_saved_average(resumed, out_dir))
                resumed = None
            if checkpoint_epoch is None:  # the state at the start: an interrupt from here on can resume
                _save_checkpoint(out_dir, epoch, model, optimizer, history, best, scan.classes, train_batches, world,
                                 average)
                checkpoint_epoch, last_checkpoint = epoch, time.perf_counter()
            # data-loading workers are this run's own processes: their load is not another program's
            others = None if head_only or cfg.num_workers else load.others()
            threads = phase_threads(head_only, data.head_batch_size, backbone.num_features, others)
            if not head_only and threads != busy_threads:
                busy_threads = threads
                if threads:
                    report.message(f"other programs kept {others:.1f} core(s) busy: {threads} thread(s) from "
                                   f"epoch {epoch + 1}")
                else:
                    report.message(f"the cores are free again: every thread from epoch {epoch + 1}")
            try:
                with torch_threads(threads):  # one thread for a small head or a busy machine, restored after
                    row = _train_epoch(cfg, model, net, phase, phase_epoch, epoch, train_batches, val_batches,
                                       optimizer, loss_fn, device, autocast, report, trained, world, mix, average)
                check_divergence(row, len(scan.classes))
            except TrainingDiverged as exc:
                if best_state is None:
                    raise
                model.load_state_dict(best_state)  # back to the last good weights
                optimizer.state.clear()
                diverged.append({"phase": phase.name, "epoch": epoch + 1})
                report.message(f"warning: {exc} Phase '{phase.name}' stopped; continuing from the best "
                               f"epoch so far ({best['epoch']}).")
                epoch = sum(p.epochs for p in phases[:phase_index + 1])
                continue
            row["seconds"] += setup_seconds
            row["elapsed"], setup_seconds = time.perf_counter() - started, 0.0
            row["threads"] = threads or torch.get_num_threads()
            history.append(row)
            if world.is_main:
                with (out_dir / "history.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
            tracker.on_epoch_end(row)
            improved = _better(row, best, balance.best_by)
            if improved:
                with _evaluated_weights(average):  # with --ema: the averaged weights, which were validated
                    best, best_state = {**row}, copy.deepcopy(model.state_dict())
                    if world.is_main:
                        save_model(out_dir, model, {**meta, "epoch": epoch + 1})
            epoch += 1
            phase_done = epoch >= cfg.total_epochs or phase_at(phases, epoch)[0] != phase_index
            if world.agree(phase_done or time.perf_counter() - last_checkpoint >= cfg.checkpoint_every):
                _save_checkpoint(out_dir, epoch, model, optimizer, history, best, scan.classes, train_batches, world,
                                 average)
                checkpoint_epoch, last_checkpoint = epoch, time.perf_counter()
            balanced = f" bal_acc {row['val_balanced_accuracy']:.4f}" if balance.imbalanced else ""
            report.end_epoch(f"epoch {epoch:>2}/{cfg.total_epochs} {phase.name:<8} "
                             f"train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                             f"val_acc {row['val_accuracy']:.4f}{balanced} {time.perf_counter() - epoch_start:6.1f}s"
                             f"{'  *best' if improved else ''}")
            if cfg.max_seconds is not None and epoch < cfg.total_epochs and \
                    world.agree(time.perf_counter() - started >= cfg.max_seconds):  # the wall-clock budget is spent
                stopped = {"reason": "max_seconds", "after_epoch": epoch, "max_seconds": cfg.max_seconds}
                report.message(f"time budget of {cfg.max_seconds:.0f}s spent after epoch {epoch} of "
                               f"{cfg.total_epochs}; stopping (the best epoch so far is kept)")
                break
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, out_dir, epoch, checkpoint_epoch) from None
    model.load_state_dict(best_state)
    with capture_pooled(model) as val_features:
        metrics, final = _final_metrics(cfg, data, model, device, precision, phases, history, best, diverged, started)
    metrics["balance"] = balance.to_dict()
    metrics["head_init"] = {"from": "imagenet", "classes": dict(head_init)} if head_init else {"from": "random"}
    metrics["stopped_early"], metrics["world_size"], metrics["accumulate"] = stopped, world.size, cfg.accumulate
    metrics["ema"] = {"decay": cfg.ema_decay, "best_weights": best.get("weights", "raw")} if cfg.ema else None
    features = world.gather(torch.cat(val_features))  # each rank pooled its share of the val images
    if world.is_main:  # the temperature and the unknown detector are fitted once, by the rank that writes
        metrics.update(fit_confidence(cfg, data, model, device, precision, phases, final["logits"].numpy(),
                                      features.numpy(), out_dir))
        _write_predictions(out_dir / "predictions.csv", scan, final["probs"], final["labels"])
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    world.barrier()
    tracker.on_run_end(metrics)
    balanced, by = ((f", balanced accuracy {metrics['val_balanced_accuracy']:.4f}", ", by balanced accuracy")
                    if balance.imbalanced else ("", ""))
    report.message(f"val_accuracy {metrics['val_accuracy']:.4f}{balanced} (best epoch {metrics['best_epoch']}, "
                   f"{metrics['best_phase']}{by}) in {metrics['seconds_total']:.0f}s → {out_dir}")
    return Run(out_dir, cfg, scan.classes, metrics, history, model)


def _save_checkpoint(out_dir: Path, epoch: int, model: Classifier, optimizer: torch.optim.Optimizer,
                     history: list, best: dict, classes: list[str], train_batches, world: World,
                     average: WeightAverage | None = None) -> None:
    """``checkpoint.pt`` with the state after ``epoch`` epochs (0: before the first one), written by
    rank 0 with every rank's random states (and the phase's average of the weights, ``--ema``)."""
    rng_by_rank = world.gather_objects(capture_rng())
    if world.is_main:
        save_checkpoint(out_dir, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "history": history, "best": best, "rng": rng_by_rank[0], "classes": classes,
                                  "rng_by_rank": rng_by_rank, "batch_generator": train_batches.generator.get_state(),
                                  "ema": None if average is None else average.state_dict()})


def _evaluated_weights(average: WeightAverage | None):
    """The weights validation scores: the average's (``--ema``, in phases that train the backbone), else
    the model's own."""
    return contextlib.nullcontext() if average is None else average.swapped_in()


def _saved_average(resumed: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The average of the weights an interrupted ``--ema`` run saved in its checkpoint."""
    saved = resumed.get("ema")
    if not isinstance(saved, dict) or not isinstance(saved.get("weights"), dict) or "steps" not in saved:
        raise CheckpointError(f"'{out_dir / CHECKPOINT_NAME}' holds no average of the weights, which this --ema "
                              f"run needs to resume mid-phase. Start the run again without --resume (in a new --out).")
    return saved


def _rank_rng(resumed: dict[str, Any], world: World) -> dict[str, Any]:
    """This rank's random states from a checkpoint (rank 0's when it was written by fewer ranks)."""
    by_rank = resumed.get("rng_by_rank") or [resumed["rng"]]
    return by_rank[world.rank] if world.rank < len(by_rank) else resumed["rng"]


def _interrupted(exc: KeyboardInterrupt, out_dir: Path, epoch: int, checkpoint_epoch: int | None) -> Interrupted:
    """What an interrupt leaves, and the one command that goes on from it."""
    how, code = ("SIGTERM", 143) if isinstance(exc, _Terminated) else ("Ctrl-C", 130)
    if checkpoint_epoch is None or not (out_dir / CHECKPOINT_NAME).is_file():
        return Interrupted(f"interrupted ({how}) before the first checkpoint, during epoch {epoch + 1}: '{out_dir}' "
                           f"holds no model, nothing to resume. Run the same command again.", code)
    where = "the start of training" if checkpoint_epoch == 0 else f"epoch {checkpoint_epoch}"
    return Interrupted(f"interrupted ({how}) during epoch {epoch + 1}; '{out_dir}' holds a checkpoint from "
                       f"{where}. Continue with: graft train --resume {out_dir}", code)


def _epochs_text(cfg: TrainConfig) -> str:
    """How the run spends its epochs, e.g. "20 epochs (6 head + 14 fine-tune)"."""
    split = f" ({cfg.head_epochs} head + {cfg.finetune_epochs} fine-tune)" if cfg.strategy == "fine-tune" else ""
    return f"{cfg.epochs} epochs{split}"


def _prepare_run_dir(cfg: TrainConfig, data: TrainingData, report: ProgressReporter, precision: str) -> Path:
    """Create the run folder and its first files."""
    scan, image_size = data.scan, data.image_size
    out_dir = prepare_out_dir(cfg)
    for warning in scan.warnings:
        report.message(f"warning: {warning}")
    if scan.bad or scan.ignored:
        atomic_write_text(out_dir / "skipped.csv", scan.skipped_csv())
    if not cfg.resume:
        atomic_write_text(out_dir / "config.json", json.dumps(
            {**cfg.to_dict(), "image_size": image_size, "resolved_precision": precision,
             "graftkit_version": __version__}, indent=2))
    if cfg.augment != "none" and not cfg.resume:  # what the model sees, for the user and the report
        write_augment_grid(out_dir / GRID_NAME, data, cfg)
    if data.duplicates:
        atomic_write_text(out_dir / "duplicates.txt", "".join(f"{p}\n" for p in data.duplicates))
        report.message(f"warning: {len(data.duplicates)} validation image(s) also appear in train "
                       f"(same bytes), e.g. {data.duplicates[0]}: validation accuracy is optimistic. "
                       f"Listed in duplicates.txt; remove them from one split.")
    if data.label_conflicts:
        atomic_write_text(out_dir / "label_conflicts.csv", label_conflicts_csv(data.label_conflicts, scan.classes))
        report.message(f"warning: {label_conflicts_warning(data.label_conflicts, scan.classes)}")
    return out_dir


def head_init_text(pairs: list[tuple[str, str]]) -> str:
    named = ", ".join(f"{cls} → {name}" if cls.lower() != name.lower() else cls for cls, name in pairs)
    return (f"head: starts from the backbone's ImageNet classifier ({named}); --head-init random for a "
            f"random head")


def _restore(cfg: TrainConfig, out_dir: Path, classes: list[str], model: Classifier,
             optimizer: torch.optim.Optimizer, report: ProgressReporter, write: bool = True) -> dict[str, Any]:
    """A fresh start, or the state of an interrupted run's last checkpoint (``--resume``)."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": {"val_accuracy": -1.0, "val_balanced_accuracy": -1.0,
                                                                  "val_loss": float("inf")},
                             "best_state": None, "resumed": None, "elapsed": 0.0}
    if cfg.resume:
        resumed = load_checkpoint(out_dir, classes)
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        best = dict(resumed["best"])
        state = {"epoch": resumed["epoch"], "history": list(resumed["history"]), "best": best,
                 "best_state": load_model(out_dir)[0].state_dict() if best["val_accuracy"] >= 0 else None,
                 "resumed": resumed, "elapsed": float(resumed["history"][-1].get("elapsed", 0.0))
                 if resumed["history"] else 0.0}
        report.message(f"resuming after epoch {state['epoch']} of {cfg.total_epochs}")
    if write:
        atomic_write_text(out_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
    return state


def _final_metrics(cfg: TrainConfig, data: TrainingData, model: Classifier, device: torch.device, precision: str,
                   phases: list[Phase], history: list[dict], best: dict, diverged: list,
                   started: float) -> tuple[dict, dict]:
    """Evaluate the best model exactly as `graft evaluate` does; these are the reported figures."""
    backbone, scan = model.backbone, data.scan
    model.eval()
    with fold_frozen_batchnorm(model, enabled=cfg.fold_bn):
        final = evaluate(model, data.val_batches(build_eval_transform(data.image_size, backbone.mean, backbone.std)),
                         device, cfg.channels_last, autocast=autocast_for(device, precision), gather=data.world.gather)
    phase_seconds: dict[str, float] = {}
    for row in history:
        phase_seconds[row["phase"]] = phase_seconds.get(row["phase"], 0.0) + row["seconds"]
    return {
        "val_accuracy": final["val_accuracy"], "val_balanced_accuracy": final["val_balanced_accuracy"],
        "val_macro_f1": final["val_macro_f1"], "val_loss": final["val_loss"], "best_epoch": best["epoch"],
        "best_phase": best["phase"], "best_epoch_val_accuracy": best["val_accuracy"],
        "final_epoch_val_accuracy": history[-1]["val_accuracy"],
        "classes": scan.classes, "num_train": len(scan.train), "num_val": len(scan.val),
        "num_skipped": len(scan.bad), "num_duplicates": len(data.duplicates),
        "num_label_conflicts": len(data.label_conflicts), "strategy": cfg.strategy,
        "backbone": backbone.name, "pretrained": backbone.pretrained, "image_size": data.image_size,
        "device": device.type, "precision": precision, "batch_size": data.batch_size,
        "head_batch_size": data.head_batch_size, "diverged": diverged,
        "seconds_total": round(time.perf_counter() - started, 3),
        "phases": _phase_summaries(phases, history, phase_seconds), "graftkit_version": __version__,
        "class_counts": {"train": scan.class_counts("train"), "val": scan.class_counts("val")},
    }, final


def write_augment_grid(path: Path, data: TrainingData, cfg: TrainConfig) -> None:
    """An image of augmented training samples (one per class, up to 8) beside their validation crop."""
    from ..data.preview import one_per_class, save_augment_grid

    picked = one_per_class(data.train_labels, limit=8)
    squares = data.decoded.get([data.train_keys[i] for i in picked])
    save_augment_grid(path, list(squares), data.image_size, cfg.augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
                      seed=cfg.seed, titles=[data.scan.classes[data.train_labels[i]] for i in picked])


def _better(row: dict[str, Any], best: dict[str, Any], by: str) -> bool:
    """Whether an epoch's row beats the best so far: by ``by`` (accuracy, or balanced accuracy on
    imbalanced data), ties by the lower validation loss."""
    return (row[by], -row["val_loss"]) > (best.get(by, -1.0), -best["val_loss"])


def check_divergence(row: dict[str, Any], num_classes: int) -> None:
    """NaN/inf losses, or a loss 100x that of guessing (ln C), mean training has blown up."""
    limit = 100 * math.log(max(num_classes, 2))
    for name in ("train_loss", "val_loss"):
        value = row[name]
        if not math.isfinite(value) or value > limit:
            raise TrainingDiverged(f"the {name.replace('_', ' ')} reached {value:.3g} in epoch {row['epoch']}; "
                                   f"lower the learning rate (--lr / --finetune-lr).")


def _train_epoch(cfg: TrainConfig, model: Classifier, net: nn.Module, phase: Phase, phase_epoch: int,
                 epoch: int, train_batches, val_batches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 device: torch.device, autocast, report: ProgressReporter, trained: nn.Module, world: World,
                 mix=None, average: WeightAverage | None = None) -> dict[str, Any]:
    """One epoch: learning rates from the phase's schedule, training (``trained``: ``net``, or ``net``
    in DistributedDataParallel), then validation of ``net`` on this rank's share, gathered. With an
    ``average`` of the weights (``--ema``), it is updated every step and ``val_*`` score it (``raw_val_*``:
    the model's own weights, for comparison; training never sees either)."""
    multipliers = phase.lr_multipliers(model.backbone.num_stages)
    steps = len(train_batches)

    def set_lr(step: int) -> float:
        lr = phase.lr * warmup_cosine(phase_epoch * steps + step, steps * phase.epochs, cfg.warmup_fraction)
        set_learning_rates(optimizer, lr, multipliers)
        return lr

    started = time.perf_counter()
    train_batches.set_epoch(epoch)
    report.start_epoch(f"{phase.name} {phase_epoch + 1}/{phase.epochs}", steps)
    net.train()  # frozen BatchNorm stays in eval mode, and is folded into its conv
    # Folding and torch.compile together measured 2x slower than either: compile wins.
    with fold_frozen_batchnorm(model, enabled=cfg.fold_bn and not cfg.compile):
        # Under DDP the ranks agree on divergence through the summed epoch loss, not per step.
        train_stats = train_one_epoch(trained, train_batches, optimizer, set_lr, loss_fn, device,
                                      cfg.channels_last, on_step=report.step, autocast=autocast, mix=mix,
                                      accumulate=cfg.accumulate, sum_over_ranks=world.sum,
                                      stop_on_nan=world.size == 1, average=average)
        val_stats = raw = evaluate(net, val_batches, device, cfg.channels_last, autocast=autocast, gather=world.gather)
        if average is not None:  # --ema: the average is what is validated and kept; its raw weights shown beside
            with average.swapped_in():
                val_stats = evaluate(net, val_batches, device, cfg.channels_last, autocast=autocast,
                                     gather=world.gather)
    return {"phase": phase.name, "epoch": epoch + 1, "phase_epoch": phase_epoch + 1,
            "train_loss": train_stats["train_loss"], "train_accuracy": train_stats["train_accuracy"],
            "val_loss": val_stats["val_loss"], "val_accuracy": val_stats["val_accuracy"],
            "val_balanced_accuracy": val_stats["val_balanced_accuracy"], "val_macro_f1": val_stats["val_macro_f1"],
            "lr": phase.lr,
            "train_images": train_stats["images"],
            "seconds": time.perf_counter() - started, "train_images_per_second": train_stats["images_per_second"],
            **({"weights": "ema", "raw_val_loss": raw["val_loss"], "raw_val_accuracy": raw["val_accuracy"]}
               if average is not None else {})}


def _phase_summaries(phases: list[Phase], history: list[dict], phase_seconds: dict[str, float]) -> list[dict]:
    out = []
    for phase in phases:
        rows = [r for r in history if r["phase"] == phase.name]
        out.append({"name": phase.name, "epochs": len(rows), "seconds": round(phase_seconds.get(phase.name, 0.0), 3),
                    "val_accuracy": rows[-1]["val_accuracy"] if rows else None,
                    "best_val_accuracy": max(r["val_accuracy"] for r in rows) if rows else None})
    return out


def _write_predictions(path: Path, scan: DataScan, probs: torch.Tensor, labels: torch.Tensor) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", "confidence", "true_class_probability"])
    confidence, predicted = probs.max(1)
    for sample, label, pred, conf, row in zip(scan.val, labels.tolist(), predicted.tolist(),
                                              confidence.tolist(), probs):
        writer.writerow([str(sample.path), scan.classes[label], scan.classes[pred], f"{conf:.6f}",
                         f"{row[label].item():.6f}"])
    atomic_write_text(path, buffer.getvalue())
