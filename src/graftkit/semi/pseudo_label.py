"""Pseudo-labelling as a data step: predict unlabelled images, keep the confident ones per class.

``pseudo_label(model, paths, ...)`` returns the chosen ``(path, class, confidence)`` rows; it has no
training loop. The caller adds them to the training samples (``with_extra_train``) and calls ``fit``
again (see ``self_training.py``).

Two guards keep a few labelled images from turning into many wrong labels:

* a per-class confidence bar: the global ``threshold``, raised for a class to the ``class_quantile``
  of the confidences predicted for that class (a class the model is unsure about gets a higher bar
  relative to its own predictions);
* a per-class cap: at most ``caps[c]`` images for class ``c`` (by default a multiple of its labelled
  count), the most confident first, so the class the model over-predicts cannot take over.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..data import (DataScan, DecodedDataset, DecodedImages, ImageBatches, Sample, augment_key,
                    build_eval_transform)
from ..engine.features import fill_features, open_feature_store
from ..engine.fit import Run
from ..engine.runtime import autocast_for, eval_batch_size
from ..engine.fusion import fold_frozen_batchnorm
from ..engine.loop import predict_logits
from ..errors import ConfigError


class ProbabilityModel(Protocol):
    def predict_proba(self, paths: Sequence[Path]) -> np.ndarray:
        """``(N, num_classes)`` class probabilities for ``paths``, in order."""


@dataclass(frozen=True)
class PseudoLabel:
    path: Path
    label: int
    confidence: float  # probability of ``label``
    margin: float      # top-1 minus top-2 probability: small means the model hesitates


@dataclass
class PseudoLabelling:
    """The model's top class for every unlabelled image, and the ones chosen as pseudo-labels."""

    predictions: list[PseudoLabel]
    chosen: list[PseudoLabel]
    thresholds: list[float]   # per class: the confidence bar applied
    caps: list[int]           # per class: the most images kept

    def counts(self) -> list[int]:
        counts = [0] * len(self.caps)
        for p in self.chosen:
            counts[p.label] += 1
        return counts

    def least_confident(self, limit: int) -> list[PseudoLabel]:
        """The images the model is least sure about (smallest margin): worth labelling by hand."""
        return sorted(self.predictions, key=lambda p: (p.margin, p.confidence, str(p.path)))[:limit]


def class_caps(labelled_counts: Sequence[int], max_ratio: float | None, max_per_class: int | None) -> list[int]:
    """Per-class caps: ``max_ratio`` x the class's labelled count, and at most ``max_per_class``."""
    caps = []
    for count in labelled_counts:
        cap = round(max_ratio * count) if max_ratio is not None else None
        if max_per_class is not None:
            cap = max_per_class if cap is None else min(cap, max_per_class)
        caps.append(cap if cap is not None else 2**62)
    return caps


def select_pseudo_labels(probs: np.ndarray, paths: Sequence[Path], threshold: float, caps: Sequence[int],
                         class_quantile: float = 0.0) -> PseudoLabelling:
    """Choose pseudo-labels from ``(N, num_classes)`` probabilities (a pure function).

    Per class ``c``: the candidates are the images whose top class is ``c``; the bar is
    ``max(threshold, quantile(their confidences, class_quantile))``; the ``caps[c]`` most
    confident candidates at or above the bar are kept.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(paths) or probs.shape[1] != len(caps):
        raise ConfigError(f"probabilities of shape {probs.shape} do not match {len(paths)} images and "
                          f"{len(caps)} classes")
    order = np.sort(probs, axis=1)
    top = probs.argmax(1)
    margins = order[:, -1] - (order[:, -2] if probs.shape[1] > 1 else 0.0)
    predictions = [PseudoLabel(Path(p), int(c), float(probs[i, c]), float(margins[i]))
                   for i, (p, c) in enumerate(zip(paths, top))]
    chosen, thresholds = [], []
    for c, cap in enumerate(caps):
        candidates = [p for p in predictions if p.label == c]
        bar = threshold
        if candidates and class_quantile > 0:
            bar = max(bar, float(np.quantile([p.confidence for p in candidates], class_quantile)))
        thresholds.append(bar)
        kept = sorted((p for p in candidates if p.confidence >= bar),
                      key=lambda p: (-p.confidence, str(p.path)))[:cap]
        chosen.extend(kept)
    return PseudoLabelling(predictions, chosen, thresholds, list(caps))


def pseudo_label(model: ProbabilityModel, unlabeled_paths: Sequence[Path], caps: Sequence[int],
                 threshold: float = 0.0, class_quantile: float = 0.0) -> PseudoLabelling:
    """Predict ``unlabeled_paths`` with ``model`` and keep the confident ones per class.

    Args:
        model: anything with ``predict_proba(paths) -> (N, num_classes)`` (``graftkit.load(run)``,
            or ``RunPredictor(run, decoded)`` which reuses the caches).
        unlabeled_paths: readable image files.
        caps: per-class maximum number of pseudo-labels (``class_caps``).
        threshold: minimum confidence for any class.
        class_quantile: per class, also require at least this quantile of that class's confidences.
    """
    if not unlabeled_paths:
        return PseudoLabelling([], [], [threshold] * len(caps), list(caps))
    probs = model.predict_proba(list(unlabeled_paths))
    return select_pseudo_labels(probs, unlabeled_paths, threshold, caps, class_quantile)


def with_extra_train(scan: DataScan, extra: Sequence[PseudoLabel]) -> DataScan:
    """A copy of ``scan`` whose training samples also hold ``extra`` (validation unchanged)."""
    return dataclasses.replace(scan, train=[*scan.train, *(Sample(p.path, p.label) for p in extra)],
                               warnings=[])


class RunPredictor:
    """``predict_proba`` with a trained run's model on images already in the decoded-image cache.

    For a feature-extraction run the pooled features come from (and go to) the same feature cache
    ``fit`` uses, so each later round predicts in milliseconds; otherwise the images run through the
    whole model, evaluated exactly as ``fit`` evaluates.
    """

    def __init__(self, run: Run, decoded: DecodedImages) -> None:
        self.run, self.decoded = run, decoded

    def predict_proba(self, paths: Sequence[Path]) -> np.ndarray:
        cfg, model = self.run.config, self.run.model
        backbone = model.backbone
        image_size, precision = int(self.run.metrics["image_size"]), str(self.run.metrics["precision"])
        device = next(model.parameters()).device
        autocast = autocast_for(device, precision)
        keys = self.decoded.keys(paths)
        eval_tf = build_eval_transform(image_size, backbone.mean, backbone.std)
        model.eval()
        if cfg.strategy == "feature-extraction" and cfg.cache:
            cut = backbone.num_stages
            store = open_feature_store(cfg.cache_dir, model, cut, image_size, self.decoded.size,
                                       augment_key(cfg.augment), precision, cfg.fold_bn)
            fill_features(store, model, cut, self.decoded, [f"{k}:0" for k in keys], eval_tf, eval_tf, device,
                          autocast, eval_batch_size(device), fold_bn=cfg.fold_bn)
            # The head runs under the same autocast as the whole model in `graft evaluate` (bf16 on
            # CPUs with native bf16), or the probabilities differ in the 4th decimal there.
            with torch.no_grad(), autocast():
                features = torch.from_numpy(store.get([f"{k}:0" for k in keys])).float().to(device)
                logits = model.head(features)
        else:
            batches = ImageBatches(DecodedDataset(self.decoded, keys, [0] * len(keys), eval_tf),
                                   eval_batch_size(device))
            with fold_frozen_batchnorm(model, enabled=cfg.fold_bn):
                logits, _ = predict_logits(model, batches, device, cfg.channels_last, autocast)
        # calibrated, as graftkit.load(run).predict_proba: the threshold means the same on both paths
        temperature = float(self.run.metrics.get("calibration", {}).get("temperature", 1.0))
        return (logits.float() / temperature).softmax(1).cpu().numpy()
