"""Using a trained model: predict images, evaluate on a labelled folder."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data import build_eval_transform, decode_square, scan_data
from .data.images import read_image_file
from .data.model_input import Prediction, expand_image_paths, iter_predictions
from .engine.checkpoint import load_model
from .engine.fusion import fold_frozen_batchnorm
from .engine.loop import predict_logits
from .engine.runtime import autocast_for, eval_batch_size
from .errors import CheckpointError, DataError
from .metrics import classification_metrics, log_loss


class _Files(Dataset):
    """Image files decoded exactly as training decodes them (``decode_square``), then ``transform``."""

    def __init__(self, paths: Sequence[Path], transform, decode_size: int) -> None:
        self.paths, self.transform, self.decode_size = list(paths), transform, decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        square = decode_square(read_image_file(self.paths[i]), self.decode_size)
        return self.transform(torch.from_numpy(square).permute(2, 0, 1)), 0


class ImageClassifier:
    """A trained model ready to use: ``graftkit.load(run_dir).predict(["a.jpg"])``."""

    def __init__(self, model, meta: dict, device: str = "cpu") -> None:
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.classes: list[str] = list(meta["classes"])
        pre = meta["preprocessing"]
        self.image_size = int(pre["image_size"])
        self.transform = build_eval_transform(self.image_size, pre["mean"], pre["std"])
        self.autocast = autocast_for(self.device, str(meta.get("precision", "fp32")))

    @classmethod
    def from_run(cls, path: str | Path, device: str = "cpu") -> "ImageClassifier":
        model, meta = load_model(path)
        return cls(model, meta, device)

    def _loader(self, paths: Sequence[Path]) -> DataLoader:
        return DataLoader(_Files(paths, self.transform, int(self.meta["preprocessing"]["resize"])),
                          batch_size=eval_batch_size(self.device))

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """``(N, num_classes)`` probabilities for readable image files, in order."""
        self.model.eval()
        with fold_frozen_batchnorm(self.model, enabled=bool(self.meta.get("fold_bn", False))):
            logits, _ = predict_logits(self.model, self._loader([Path(p) for p in paths]), self.device,
                                       channels_last=True, autocast=self.autocast)
        return logits.softmax(1).numpy()

    def _proba_squares(self, squares: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for decoded ``(S, S, 3)`` uint8 squares, in order."""
        tensors = torch.stack([self.transform(torch.from_numpy(q).permute(2, 0, 1)) for q in squares])
        batches = [(tensors[i:i + eval_batch_size(self.device)], torch.zeros(0))
                   for i in range(0, len(tensors), eval_batch_size(self.device))]
        self.model.eval()
        with fold_frozen_batchnorm(self.model, enabled=bool(self.meta.get("fold_bn", False))):
            logits, _ = predict_logits(self.model, batches, self.device, channels_last=True,
                                       autocast=self.autocast)
        return logits.softmax(1).numpy()

    def iter_predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 1, on_skip=None,
                     on_progress=None) -> Iterator[Prediction]:
        """Top-k classes for every image under ``paths`` (files or folders), yielded a chunk at a time
        (memory stays bounded on a folder of any size). Unreadable files (and FIFOs, devices, files
        over ``MAX_FILE_BYTES``) are skipped and reported through ``on_skip(path, reason)``;
        ``on_progress(done, total)`` is called as files are read."""
        # Chunks are a multiple of the batch size, so batches match `graft evaluate`'s.
        return iter_predictions(paths, int(self.meta["preprocessing"]["resize"]), self.classes,
                                self._proba_squares, top_k, on_skip, on_progress)

    def predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 1,
                on_skip=None, on_progress=None) -> list[Prediction]:
        """:meth:`iter_predict` as a list."""
        return list(self.iter_predict(paths, top_k, on_skip, on_progress))

    def evaluate(self, data_dir: str | Path, split: str = "val", skip_bad_images: bool = False) -> dict:
        """Accuracy, per-class precision/recall/F1 and confusion matrix on a labelled folder.

        ``split``: ``val`` (a split root's val/, or the same seeded hold-out the model was trained
        with for a class-folder root), ``train``, or ``all``.
        """
        split_cfg = self.meta.get("split", {})
        scan = scan_data(data_dir, float(split_cfg.get("val_fraction", 0.2)), int(split_cfg.get("seed", 0)),
                         skip_bad_images=skip_bad_images)
        unknown = sorted(set(scan.classes) - set(self.classes))
        if unknown:
            raise CheckpointError(f"'{data_dir}' has classes the model does not know: {', '.join(unknown)} "
                                  f"(model classes: {', '.join(self.classes)}). Evaluate on matching data "
                                  f"or retrain.")
        samples = {"val": scan.val, "train": scan.train, "all": [*scan.train, *scan.val]}.get(split)
        if samples is None:
            raise DataError(f"split must be val, train or all; got {split!r}")
        if not samples:
            raise DataError(f"'{data_dir}' has no images in split {split!r}.")
        to_model = [self.classes.index(scan.classes[s.label]) for s in samples]
        probs = self.predict_proba([s.path for s in samples])
        labels = np.array(to_model)
        result = classification_metrics(labels, probs.argmax(1), self.classes)
        result["loss"] = log_loss(labels, probs)  # as training computes val_loss (graftkit.metrics)
        result["split"] = split
        result["data_dir"] = str(data_dir)
        return result
