"""graftkit: transfer learning and fine-tuning of image classifiers, from a folder of photos.

The public names load on first use (PEP 562), so ``import graftkit`` and ``graft --version`` do not
import torch; ``graftkit.fit`` and the rest are the same objects as in their modules.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import CheckpointError, ConfigError, DataError, GraftError

_LAZY = {
    "Backbone": "graftkit.backbones", "create_backbone": "graftkit.backbones",
    "list_backbones": "graftkit.backbones", "register_backbone": "graftkit.backbones",
    "TrainConfig": "graftkit.config",
    "check_image": "graftkit.data", "scan_data": "graftkit.data",
    "Run": "graftkit.engine", "fit": "graftkit.engine",
    "tune_cpu_allocator": "graftkit.hardware",
    "export_model": "graftkit.export", "OnnxClassifier": "graftkit.onnx_classifier",
    "ImageClassifier": "graftkit.predict", "Prediction": "graftkit.predict",
    "subsample": "graftkit.scarce",
    "pseudo_label": "graftkit.semi",
    "PretrainConfig": "graftkit.ssl", "pretrain_ssl": "graftkit.ssl",
    "label_efficiency": "graftkit.workflows.label_efficiency",
    "PseudoLabelConfig": "graftkit.workflows.self_training",
    "train_with_pseudo_labels": "graftkit.workflows.self_training",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graftkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def train(data_dir: str | Path, **options: Any):
    """Train on an image folder: ``graftkit.train("photos", strategy="fine-tune", epochs=5)``.

    Keyword options are :class:`TrainConfig` fields (``freeze_auto=True`` measures the freeze
    depth first). Returns the finished :class:`Run`.
    """
    import dataclasses

    from .config import TrainConfig
    from .workflows.freeze_auto import train_run

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}. "
                          f"Valid: {', '.join(sorted(known - {'data_dir'}))}")
    return train_run(TrainConfig(data_dir=Path(data_dir), **options))


def load(path: str | Path, device: str = "cpu"):
    """Load a trained model from a run folder (or its model.json / model.safetensors) onto ``device``
    (auto | cpu | cuda). Its ``predict``, ``logits`` and ``features`` take files, folders, Pillow
    images, numpy arrays and tensors (see :class:`graftkit.ImageClassifier`, docs/evaluate.md).

    Changes nothing process-wide (the allocator tuning of ``graft`` and long training is opt-in:
    :func:`tune_cpu_allocator`)."""
    from .predict import ImageClassifier

    return ImageClassifier.from_run(path, device=device)


__all__ = ["Backbone", "CheckpointError", "ConfigError", "DataError", "GraftError", "ImageClassifier",
           "Prediction", "Run", "TrainConfig", "__version__", "check_image", "create_backbone", "fit",
           "list_backbones", "load", "register_backbone", "scan_data", "train", "tune_cpu_allocator"]
__all__ += ["OnnxClassifier", "export_model"]
__all__ += ["PretrainConfig", "PseudoLabelConfig", "label_efficiency", "pretrain_ssl", "pseudo_label",
            "subsample", "train_with_pseudo_labels"]
