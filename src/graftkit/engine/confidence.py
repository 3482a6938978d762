"""After training: the temperature that calibrates the probabilities, and the "unknown" detector.

Both are fitted on the trained model's validation outputs (:mod:`graftkit.calibration`,
:mod:`graftkit.ood`); their figures in ``model.json`` are cross-fitted. The feature bank is the
trained model's pooled features of the training images: read from the feature cache when the
backbone stayed frozen, else from one more pass over train.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import calibration, ood
from ..config import TrainConfig
from ..data import DecodedDataset, ImageBatches, augment_key, build_eval_transform
from ..fileio import atomic_write_bytes, atomic_write_text
from ..heads import Classifier
from ..strategies import Phase
from .features import capture_pooled, fill_features, open_feature_store
from .fusion import fold_frozen_batchnorm
from .loop import predict_logits
from .prepare import TrainingData
from .runtime import autocast_for

MODEL_FIELDS = ("temperature", "nll_before", "nll_after", "ece_before", "ece_after", "scored", "num_images")


def train_features(cfg: TrainConfig, data: TrainingData, model: Classifier, device: torch.device,
                   precision: str, phases: list[Phase]) -> np.ndarray:
    """``(N_train, num_features)`` pooled features of the trained model, in ``data.train_keys`` order."""
    backbone = model.backbone
    eval_tf = build_eval_transform(data.image_size, backbone.mean, backbone.std)
    autocast = autocast_for(device, precision)
    if cfg.cache and all(p.first_trainable is None for p in phases):  # the frozen backbone's cache
        store = open_feature_store(cfg.cache_dir, model, backbone.num_stages, data.image_size, data.decoded.size,
                                   augment_key(cfg.augment), precision, cfg.fold_bn)
        fill_features(store, model, backbone.num_stages, data.decoded, [f"{k}:0" for k in data.train_keys],
                      eval_tf, eval_tf, device, autocast, data.eval_batch_size, fold_bn=cfg.fold_bn)
        return store.get([f"{k}:0" for k in data.train_keys]).astype(np.float32)
    batches = ImageBatches(DecodedDataset(data.decoded, data.train_keys, data.train_labels, eval_tf),
                           data.eval_batch_size, num_workers=cfg.num_workers)
    model.eval()
    with fold_frozen_batchnorm(model, enabled=cfg.fold_bn), capture_pooled(model) as rows:
        predict_logits(model, batches, device, cfg.channels_last, autocast=autocast)
    return torch.cat(rows).numpy()


def fit_confidence(cfg: TrainConfig, data: TrainingData, model: Classifier, device: torch.device,
                   precision: str, phases: list[Phase], val_logits: np.ndarray,
                   val_features: np.ndarray, out_dir: Path) -> dict[str, Any]:
    """Fit the temperature and the unknown detector, write ``ood.safetensors`` and add both to
    ``model.json``; return what ``metrics.json`` records of them (the reliability diagram's bins)."""
    labels = np.asarray(data.val_labels, dtype=np.int64)
    if len(labels) < 2:  # nothing to fit on: the model keeps T = 1 and has no detector
        return {}
    fitted = calibration.calibrate(val_logits, labels, seed=cfg.seed)
    temperature = fitted["temperature"]
    msp = calibration.softmax(val_logits, temperature).max(axis=1)
    scorer = ood.build_scorer(train_features(cfg, data, model, device, precision, phases), data.train_labels,
                              val_features, msp, seed=cfg.seed)
    payload = scorer.to_bytes()
    atomic_write_bytes(out_dir / ood.OOD_FILE, payload)  # first: model.json names it by its digest
    update_model_meta(out_dir, {"calibration": {k: fitted[k] for k in MODEL_FIELDS},
                                "ood": scorer.meta(payload, ood.DEFAULT_KEEP)})
    return {"calibration": {**{k: fitted[k] for k in MODEL_FIELDS}, "bins": calibration.ECE_BINS,
                            "reliability_before": fitted["reliability_before"],
                            "reliability_after": fitted["reliability_after"]},
            "ood": {"keep_fraction": ood.DEFAULT_KEEP, "k": scorer.k, "bank_rows": int(len(scorer.bank))}}


def update_model_meta(out_dir: Path, fields: dict[str, Any]) -> None:
    """Add ``fields`` to ``model.json`` (written atomically; the weights it names are unchanged)."""
    path = Path(out_dir) / "model.json"
    meta = json.loads(path.read_text())
    atomic_write_text(path, json.dumps({**meta, **fields}, indent=2))
