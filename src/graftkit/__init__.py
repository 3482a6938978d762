"""graftkit: transfer learning and fine-tuning of image classifiers, from a folder of photos."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

from .backbones import Backbone, create_backbone, list_backbones, register_backbone  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .data import check_image, scan_data  # noqa: E402
from .engine import Run, fit  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, GraftError  # noqa: E402
from .predict import ImageClassifier, Prediction  # noqa: E402
from .scarce import label_efficiency, subsample  # noqa: E402
from .semi import PseudoLabelConfig, pseudo_label, train_with_pseudo_labels  # noqa: E402
from .ssl import PretrainConfig, pretrain_ssl  # noqa: E402


def train(data_dir: str | Path, **options: Any) -> Run:
    """Train on an image folder: ``graftkit.train("photos", strategy="fine-tune", epochs=5)``.

    Keyword options are :class:`TrainConfig` fields. Returns the finished :class:`Run`.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}. "
                          f"Valid: {', '.join(sorted(known - {'data_dir'}))}")
    return fit(TrainConfig(data_dir=Path(data_dir), **options))


def load(path: str | Path, device: str = "cpu") -> ImageClassifier:
    """Load a trained model from a run folder (or its model.json / model.safetensors)."""
    return ImageClassifier.from_run(path, device=device)


__all__ = ["Backbone", "CheckpointError", "ConfigError", "DataError", "GraftError", "ImageClassifier",
           "Prediction", "Run", "TrainConfig", "__version__", "check_image", "create_backbone", "fit",
           "list_backbones", "load", "register_backbone", "scan_data", "train"]
__all__ += ["PretrainConfig", "PseudoLabelConfig", "label_efficiency", "pretrain_ssl", "pseudo_label",
            "subsample", "train_with_pseudo_labels"]
