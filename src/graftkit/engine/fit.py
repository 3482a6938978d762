"""``fit(cfg)``: scan the data, build the model, run the phases, write the run folder."""
from __future__ import annotations

import copy
import csv
import io
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..backbones import create_backbone
from ..config import TrainConfig
from ..data import DataScan, ImageListDataset, build_eval_transform, build_train_transform, scan_data
from ..data.transforms import EVAL_CROP_FRACTION
from ..errors import ConfigError
from ..heads import Classifier
from ..strategies import build_optimizer, build_phases, phase_at, set_learning_rates, warmup_cosine
from .checkpoint import atomic_write_text, save_model
from .loop import evaluate, train_one_epoch
from .progress import ProgressReporter


@dataclass
class Run:
    """A finished training run: where it lives and what it produced (the best epoch's model)."""

    out_dir: Path
    config: TrainConfig
    classes: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: Classifier

    def predict(self, paths, top_k: int = 1):
        from ..predict import ImageClassifier

        return ImageClassifier.from_run(self.out_dir).predict(paths, top_k=top_k)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_out_dir(cfg: TrainConfig) -> Path:
    out = cfg.out_dir or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.strategy}"
    if (out / "model.safetensors").exists() or (out / "metrics.json").exists():
        raise ConfigError(f"'{out}' already holds a run; pass another --out (nothing was overwritten).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".graftkit-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder '{out}' ({exc.strerror or exc}). "
                          f"Pass a writable --out.") from None
    return out


def model_meta(cfg: TrainConfig, model: Classifier, classes: list[str], image_size: int) -> dict[str, Any]:
    backbone = model.backbone
    return {
        "classes": classes, "backbone": backbone.name, "num_features": backbone.num_features,
        "head": {"type": "linear", "dropout": cfg.dropout},
        "preprocessing": {"image_size": image_size, "resize": round(image_size / EVAL_CROP_FRACTION),
                          "crop": "center", "mean": list(backbone.mean), "std": list(backbone.std),
                          "scale": "0-1 then normalise"},
        "split": {"val_fraction": cfg.val_fraction, "seed": cfg.seed},
        "strategy": cfg.strategy, "graftkit_version": __version__,
    }


def fit(cfg: TrainConfig, scan: DataScan | None = None) -> Run:
    """Train a classifier as ``cfg`` says and write the run folder.

    Args:
        cfg: the resolved configuration.
        scan: an already validated data scan (else ``scan_data`` runs first).
    """
    started = time.perf_counter()
    generator = seed_everything(cfg.seed)
    report = ProgressReporter(cfg.progress)
    try:
        return _fit(cfg, scan, report, generator, started)
    finally:
        report.close()


def _fit(cfg: TrainConfig, scan: DataScan | None, report: ProgressReporter,
         generator: torch.Generator, started: float) -> Run:
    device = resolve_device(cfg.device)
    if scan is None:  # validate the data before anything slow happens
        scan = scan_data(cfg.data_dir, cfg.val_fraction, cfg.seed, cfg.skip_bad_images)
    out_dir = prepare_out_dir(cfg)
    backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained and cfg.strategy != "scratch",
                               weights=cfg.weights)
    image_size = cfg.image_size or backbone.image_size
    for warning in scan.warnings:
        report.message(f"warning: {warning}")
    if scan.bad or scan.ignored:
        atomic_write_text(out_dir / "skipped.txt", "\n".join(scan.skipped_lines()) + "\n")
    atomic_write_text(out_dir / "config.json", json.dumps(
        {**cfg.to_dict(), "image_size": image_size, "graftkit_version": __version__}, indent=2))

    model = Classifier(backbone, len(scan.classes), cfg.dropout)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    decode_size = round(image_size / EVAL_CROP_FRACTION)
    train_tf = build_train_transform(image_size, backbone.mean, backbone.std, cfg.augment)
    eval_tf = build_eval_transform(image_size, backbone.mean, backbone.std)
    pin = device.type == "cuda"
    train_loader = DataLoader(ImageListDataset(scan.train, train_tf, decode_size), cfg.batch_size,
                              shuffle=True, generator=generator, num_workers=cfg.num_workers,
                              pin_memory=pin, drop_last=len(scan.train) > cfg.batch_size)
    val_loader = DataLoader(ImageListDataset(scan.val, eval_tf, decode_size), cfg.batch_size * 2,
                            num_workers=cfg.num_workers, pin_memory=pin)

    phases = build_phases(cfg, backbone.num_stages)
    optimizer = build_optimizer(model, cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    report.message(f"{cfg.strategy} · {backbone.name} ({'pretrained' if backbone.pretrained else 'random init'}) "
                   f"· {len(scan.classes)} classes · {len(scan.train)} train / {len(scan.val)} val images "
                   f"· {image_size}px · {device.type} → {out_dir}")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_accuracy": -1.0, "val_loss": float("inf")}
    best_state: dict[str, torch.Tensor] | None = None
    phase_seconds: dict[str, float] = {}
    meta = model_meta(cfg, model, scan.classes, image_size)
    history_file = (out_dir / "history.jsonl").open("w")
    try:
        for epoch in range(cfg.total_epochs):
            phase_index, phase, phase_epoch = phase_at(phases, epoch)
            if phase_epoch == 0:  # the one place freezing changes
                model.set_trainable(phase.trainable_stages(backbone.num_stages), phase.train_bn)
                report.message(f"phase {phase_index + 1}/{len(phases)} · "
                               f"{phase.describe(backbone.num_stages)}")
            multipliers = phase.lr_multipliers(backbone.num_stages)
            steps = len(train_loader)
            total_steps = steps * phase.epochs

            def set_lr(step: int) -> float:
                lr = phase.lr * warmup_cosine(phase_epoch * steps + step, total_steps, cfg.warmup_fraction)
                set_learning_rates(optimizer, lr, multipliers)
                return lr

            epoch_start = time.perf_counter()
            report.start_epoch(f"{phase.name} {phase_epoch + 1}/{phase.epochs}", steps)
            train_stats = train_one_epoch(model, train_loader, optimizer, set_lr, loss_fn, device,
                                          cfg.channels_last, on_step=report.step)
            val_stats = evaluate(model, val_loader, device, cfg.channels_last)
            seconds = time.perf_counter() - epoch_start
            phase_seconds[phase.name] = phase_seconds.get(phase.name, 0.0) + seconds
            row = {"phase": phase.name, "epoch": epoch + 1, "phase_epoch": phase_epoch + 1,
                   "train_loss": train_stats["train_loss"], "train_accuracy": train_stats["train_accuracy"],
                   "val_loss": val_stats["val_loss"], "val_accuracy": val_stats["val_accuracy"],
                   "lr": phase.lr, "seconds": seconds, "elapsed": time.perf_counter() - started}
            history.append(row)
            history_file.write(json.dumps(row) + "\n")
            history_file.flush()
            improved = (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])
            if improved:
                best = {**row}
                best_state = copy.deepcopy(model.state_dict())
                save_model(out_dir, model, {**meta, "epoch": epoch + 1, "val_accuracy": row["val_accuracy"]})
                _write_predictions(out_dir / "predictions.csv", scan, val_stats["probs"], val_stats["labels"])
            report.end_epoch(f"epoch {epoch + 1:>2}/{cfg.total_epochs} {phase.name:<8} "
                             f"train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                             f"val_acc {row['val_accuracy']:.4f} {seconds:6.1f}s{'  *best' if improved else ''}")
    finally:
        history_file.close()

    model.load_state_dict(best_state)
    model.eval()
    phase_summaries = []
    for phase in phases:
        rows = [r for r in history if r["phase"] == phase.name]
        phase_summaries.append({"name": phase.name, "epochs": len(rows),
                                "seconds": round(phase_seconds.get(phase.name, 0.0), 3),
                                "val_accuracy": rows[-1]["val_accuracy"] if rows else None,
                                "best_val_accuracy": max(r["val_accuracy"] for r in rows) if rows else None})
    metrics = {
        "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"], "best_epoch": best["epoch"],
        "best_phase": best["phase"], "final_val_accuracy": history[-1]["val_accuracy"],
        "classes": scan.classes, "num_train": len(scan.train), "num_val": len(scan.val),
        "num_skipped": len(scan.bad), "strategy": cfg.strategy, "backbone": backbone.name,
        "pretrained": backbone.pretrained, "image_size": image_size, "device": device.type,
        "seconds_total": round(time.perf_counter() - started, 3), "phases": phase_summaries,
        "graftkit_version": __version__,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    report.message(f"best val_accuracy {metrics['val_accuracy']:.4f} (epoch {metrics['best_epoch']}, "
                   f"{metrics['best_phase']}) in {metrics['seconds_total']:.0f}s → {out_dir}")
    return Run(out_dir, cfg, scan.classes, metrics, history, model)


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
