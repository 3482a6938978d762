"""``pretrain_ssl``: continue a backbone's ImageNet training on the user's unlabelled images.

A different loop from ``fit`` (two or more views per image, no labels), so it lives here. It stops
after ``epochs``, or between two steps once ``minutes`` have passed, and writes
``backbone.safetensors`` (graftkit Backbone keys: ``graft train --weights`` loads it) and
``pretrain.json`` (loss per epoch, seconds, and the probes). The probe fits logistic regression and
a kNN classifier on pooled features of a labelled folder, before and after, so the user sees whether
pretraining helped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

from ..backbones import Backbone, create_backbone, native_image_size
from ..config import DEVICES, default_cache_dir
from ..data import DecodedImages, build_eval_transform, decode_size_for, find_unlabeled_images, scan_data
from ..engine.fusion import fold_frozen_batchnorm
from ..engine.runtime import resolve_device, seed_everything
from ..errors import ConfigError
from ..fileio import atomic_write_text
from .methods import METHODS, build_method, build_views


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``graft pretrain``: the method, the data, and the time it may take."""

    unlabeled_dir: Path
    out_dir: Path
    method: str = "simclr"
    backbone: str = "efficientnet_lite0"
    weights: Path | None = None   # start from these instead of the packaged ImageNet weights
    epochs: int = 10
    minutes: float | None = None  # stop between steps once this much time has passed
    image_size: int = 128         # views are small on a CPU; graft train still uses its own size
    batch_size: int = 32
    lr: float = 1e-3              # heads
    backbone_lr: float = 1e-4     # the pretrained backbone moves slowly, as in fine-tuning
    weight_decay: float = 1e-4
    freeze: int = 0               # first stages kept frozen (cheaper backward)
    train_bn: bool = False        # BatchNorm statistics stay ImageNet's unless set
    seed: int = 0
    device: str = "auto"
    probe_data: Path | None = None  # a labelled folder for the before/after probe
    probe_image_size: int | None = None  # None: the backbone's native size (what graft train uses)
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("unlabeled_dir", "out_dir", "weights", "probe_data", "cache_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.freeze < 0:
            raise ConfigError(f"freeze must be >= 0, got {self.freeze}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (the loss compares images in a batch), got {self.batch_size}")
        for name in ("lr", "backbone_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def _keep_bn_eval(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


@torch.no_grad()
def pooled_features(backbone: Backbone, decoded: DecodedImages, paths: list[Path], image_size: int,
                    device: torch.device, batch_size: int = 32) -> np.ndarray:
    """``(N, num_features)`` pooled features of the evaluation crop of each image."""
    backbone.eval()
    transform = build_eval_transform(image_size, backbone.mean, backbone.std)
    keys = decoded.keys(paths)
    out = []
    for start in range(0, len(keys), batch_size):
        squares = decoded.get(keys[start:start + batch_size])
        x = torch.stack([transform(torch.from_numpy(s).permute(2, 0, 1)) for s in squares]).to(device)
        out.append(backbone(x).float().cpu().numpy())
    return np.concatenate(out)


def probe(backbone: Backbone, data_dir: Path, image_size: int, device: torch.device,
          cache_dir: Path) -> dict[str, Any]:
    """Linear (logistic regression) and kNN accuracy on ``data_dir``'s val split, from its train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    decoded = DecodedImages(cache_dir, decode_size_for(image_size))
    scan = scan_data(data_dir, checker=decoded.check_and_fill)
    decoded.flush()
    train = pooled_features(backbone, decoded, [s.path for s in scan.train], image_size, device)
    val = pooled_features(backbone, decoded, [s.path for s in scan.val], image_size, device)
    y_train = np.array([s.label for s in scan.train])
    y_val = np.array([s.label for s in scan.val])
    scaler = StandardScaler().fit(train)
    linear = LogisticRegression(max_iter=3000, C=0.5).fit(scaler.transform(train), y_train)
    k = max(1, min(10, len(train) // max(1, len(scan.classes))))

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    knn = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(unit(train), y_train)
    return {"linear_accuracy": float((linear.predict(scaler.transform(val)) == y_val).mean()),
            "knn_accuracy": float((knn.predict(unit(val)) == y_val).mean()), "knn_k": k,
            "num_train": len(train), "num_val": len(val), "image_size": image_size, "data_dir": str(data_dir)}


def pretrain_ssl(cfg: PretrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 on_message: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Self-supervised pretraining of ``cfg.backbone`` on ``cfg.unlabeled_dir``; returns the summary
    saved in ``pretrain.json``."""
    say = on_message or (lambda text: None)
    started = time.perf_counter()
    out = cfg.out_dir
    if (out / "backbone.safetensors").exists():
        raise ConfigError(f"'{out}' already holds pretrained weights; pass another --out.")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    cache_dir = cfg.cache_dir or default_cache_dir()
    decoded = DecodedImages(cache_dir, decode_size_for(cfg.image_size))
    paths, bad = find_unlabeled_images(cfg.unlabeled_dir, decoded)
    if bad:
        say(f"warning: {len(bad)} unreadable file(s) left out, e.g. {bad[0][0]} ({bad[0][1]})")
    if len(paths) < cfg.batch_size:
        raise ConfigError(f"'{cfg.unlabeled_dir}' has {len(paths)} readable images, fewer than one batch "
                          f"({cfg.batch_size}); add images or lower --batch-size.")
    backbone = create_backbone(cfg.backbone, pretrained=True, weights=cfg.weights).to(device)
    probe_size = cfg.probe_image_size or native_image_size(cfg.backbone)
    probes: dict[str, Any] = {}
    probe_seconds = 0.0
    if cfg.probe_data is not None:
        probe_started = time.perf_counter()
        probes["before"] = probe(backbone, cfg.probe_data, probe_size, device, cache_dir)
        say(f"probe before: linear {probes['before']['linear_accuracy']:.4f}, "
            f"kNN {probes['before']['knn_accuracy']:.4f} on {cfg.probe_data}")
        probe_seconds = time.perf_counter() - probe_started

    if cfg.freeze >= backbone.num_stages:
        raise ConfigError(f"--freeze {cfg.freeze} would freeze every stage of {backbone.name} "
                          f"({backbone.num_stages} stages); use 0..{backbone.num_stages - 1}.")
    method = build_method(cfg.method, backbone, cfg.epochs).to(device, memory_format=torch.channels_last)
    for stage in backbone.stages[:cfg.freeze]:
        stage.requires_grad_(False)
    backbone_params = [p for p in backbone.parameters() if p.requires_grad]
    own = {id(p) for p in backbone.parameters()}
    head_params = [p for p in method.parameters() if p.requires_grad and id(p) not in own]
    optimizer = torch.optim.AdamW([{"params": backbone_params, "lr": cfg.backbone_lr},
                                   {"params": head_params, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    views = build_views(cfg.method, cfg.image_size, backbone.mean, backbone.std)
    steps_per_epoch = len(paths) // cfg.batch_size  # full batches only: the losses compare within a batch
    total_steps = steps_per_epoch * cfg.epochs
    say(f"{cfg.method} · {backbone.name} · {len(paths)} images · {cfg.image_size}px · {steps_per_epoch} "
        f"steps/epoch × {cfg.epochs} epochs" + (f" · at most {cfg.minutes:g} min" if cfg.minutes else ""))
    keys = decoded.keys(paths)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    step, stopped_by = 0, "epochs"
    # --minutes bounds the whole command: keep time for the probe after training and for saving
    deadline = started + 60 * cfg.minutes - 1.2 * probe_seconds - 2 if cfg.minutes else math.inf
    for epoch in range(cfg.epochs):
        method.train()
        for stage in backbone.stages[:cfg.freeze]:
            stage.eval()
        if not cfg.train_bn:  # ImageNet statistics: small CPU batches would make them noisy
            _keep_bn_eval(backbone)
            for name in ("backbone_momentum", "teacher_backbone"):
                if hasattr(method, name):
                    _keep_bn_eval(getattr(method, name))
        epoch_started, losses = time.perf_counter(), []
        order = torch.randperm(len(keys), generator=generator).tolist()
        # frozen BatchNorm folded into its conv, as in fit: the same result, less work per step
        with fold_frozen_batchnorm(method, enabled=not cfg.train_bn):
            for b in range(steps_per_epoch):
                batch = [keys[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
                per_image = [views(Image.fromarray(square)) for square in decoded.get(batch)]
                batch_views = [torch.stack(v).to(device, memory_format=torch.channels_last) for v in zip(*per_image)]
                loss = method(batch_views, epoch)
                if not torch.isfinite(loss):
                    raise ConfigError(f"the {cfg.method} loss became {loss.item()} at step {step}; lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                method.after_step(step / max(1, total_steps))
                losses.append(loss.item())
                step_losses.append(round(loss.item(), 5))
                if time.perf_counter() > deadline:
                    stopped_by = "minutes"
                    break
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "steps": len(losses),
               "seconds": round(time.perf_counter() - epoch_started, 3)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if stopped_by == "minutes":
            break

    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()},
              str(out / "backbone.safetensors"))
    train_seconds = time.perf_counter() - started
    if cfg.probe_data is not None:
        probes["after"] = probe(backbone, cfg.probe_data, probe_size, device, cache_dir)
        say(f"probe after:  linear {probes['after']['linear_accuracy']:.4f}, "
            f"kNN {probes['after']['knn_accuracy']:.4f}")
    summary = {
        "method": cfg.method, "backbone": backbone.name, "num_images": len(paths), "image_size": cfg.image_size,
        "epochs_planned": cfg.epochs, "epochs_done": len(history), "steps": step, "stopped_by": stopped_by,
        "loss_per_epoch": [r["loss"] for r in history], "history": history, "loss_per_step": step_losses,
        "seconds_training": round(train_seconds, 1), "seconds_total": round(time.perf_counter() - started, 1),
        "probe": probes, "weights": str(out / "backbone.safetensors"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "use": f"graft train DATA_DIR --backbone {cfg.backbone} --weights {out / 'backbone.safetensors'}",
    }
    atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=2))
    return summary
