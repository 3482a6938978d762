"""What the server needs of a model: a small interface, and its PyTorch implementation.

A predictor takes decoded ``(S, S, 3)`` uint8 squares (``S = decode_size``, decoded as training
decodes) and returns calibrated probabilities and pooled features; the server does the rest
(unknown scores with :mod:`graftkit.ood`, limits, batching). An ONNX predictor only has to provide
the same attributes and ``predict`` (its ``explain`` returns None: no Grad-CAM without autograd).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..ood import OodScorer


class Predictor(Protocol):
    classes: list[str]
    decode_size: int           # side of the decoded square that predict() takes
    ood: OodScorer | None      # the unknown detector, None for a model without one
    kind: str                  # "pytorch", "onnx", ...

    def predict(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C)`` calibrated probabilities and ``(N, D)`` pooled features, in order."""

    def explain(self, square: np.ndarray, class_index: int) -> bytes | None:
        """A PNG of the Grad-CAM heat-map over the model's input crop, or None if unsupported."""

    def info(self) -> dict[str, Any]:
        """Classes, backbone, metrics, calibration: what ``GET /model`` shows."""


class TorchPredictor:
    """A graftkit run folder, through :class:`graftkit.predict.ImageClassifier`."""

    kind = "pytorch"

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        from ..engine.checkpoint import resolve_model_path
        from ..predict import ImageClassifier

        self.folder = resolve_model_path(run_dir)
        self.classifier = ImageClassifier.from_run(self.folder, device=device)
        self.classes = self.classifier.classes
        self.decode_size = int(self.classifier.meta["preprocessing"]["resize"])
        self.ood = self.classifier.ood

    def predict(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.classifier.outputs_for_squares(squares)

    def explain(self, square: np.ndarray, class_index: int) -> bytes | None:
        import io

        from ..report.gradcam import explain_square
        from ..report.images import overlay_heatmap

        crop, maps = explain_square(self.classifier, square, [class_index])
        buffer = io.BytesIO()
        overlay_heatmap(crop, maps[0]).save(buffer, "PNG")
        return buffer.getvalue()

    def info(self) -> dict[str, Any]:
        meta = self.classifier.meta
        metrics = _read_metrics(self.folder / "metrics.json")
        return {"kind": self.kind, "classes": self.classes, "backbone": meta.get("backbone"),
                "image_size": self.classifier.image_size, "preprocessing": meta.get("preprocessing"),
                "metrics": metrics, "calibration": meta.get("calibration"),
                "unknown": None if self.ood is None else {
                    "threshold": self.ood.threshold, "k": self.ood.k,
                    "keep_fraction": meta["ood"].get("keep_fraction")},
                "graftkit_version": meta.get("graftkit_version")}


def _read_metrics(path: Path) -> dict[str, Any]:
    """The scalar figures of a run's metrics.json (absent or unreadable: empty)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("val_accuracy", "val_loss", "num_train", "num_val", "strategy", "best_epoch", "image_size")
    return {k: metrics[k] for k in keys if isinstance(metrics, dict) and k in metrics}


class OnnxPredictor:
    """An ``.onnx`` file from ``graft export``, on onnxruntime (no torch): no Grad-CAM, and no unknown
    detector (the training features it needs stay in the run folder)."""

    kind = "onnx"
    ood = None

    def __init__(self, path: str | Path) -> None:
        from ..onnx_classifier import OnnxClassifier

        self.classifier = OnnxClassifier(path)
        self.classes = self.classifier.classes
        self.decode_size = self.classifier.decode_size

    def predict(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probs, features = self.classifier.outputs_for_squares(squares)
        return probs.astype(np.float32), features

    def explain(self, square: np.ndarray, class_index: int) -> bytes | None:
        return None

    def info(self) -> dict[str, Any]:
        meta = self.classifier.meta
        return {"kind": self.kind, "classes": self.classes, "backbone": meta.get("backbone"),
                "image_size": int(meta["preprocessing"]["image_size"]), "preprocessing": meta["preprocessing"],
                "metrics": {}, "calibration": meta.get("calibration"), "unknown": None,
                "graftkit_version": meta.get("graftkit_version")}


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """The predictor for a run folder (or its model.json), or for an ``.onnx`` file from ``graft export``."""
    if Path(path).suffix.lower() == ".onnx":
        from ..errors import ConfigError

        if device not in ("auto", "cpu"):
            raise ConfigError(f"'{path}' runs on onnxruntime's CPU provider; --device {device} is for a run folder.")
        return OnnxPredictor(path)
    return TorchPredictor(path, device)
