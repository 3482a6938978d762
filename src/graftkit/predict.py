"""Using a trained model: predict images, evaluate on a labelled folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .calibration import ece, nll, softmax
from .data import IMAGE_EXTENSIONS, build_eval_transform, decode_square, scan_data
from .data.images import read_image_file
from .data.scan import DECODE_ERRORS, describe_image_error, walk_files
from .engine.checkpoint import load_model, resolve_model_path
from .engine.features import capture_pooled
from .engine.fusion import fold_frozen_batchnorm
from .engine.loop import predict_logits
from .engine.runtime import autocast_for, eval_batch_size
from .errors import CheckpointError, ConfigError, DataError
from .metrics import classification_metrics, log_loss
from .ood import OodScorer, detection_figures, load_scorer, p_values


UNKNOWN = "unknown"


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, calibrated probability), most likely first
    unknown_score: float | None = None  # p-value of the feature distance (graftkit.ood); None: no detector
    is_unknown: bool | None = None      # unknown_score below the model's threshold
    rejected: bool = False              # predict(reject_unknown=True) and is_unknown: label is "unknown"

    @property
    def label(self) -> str:
        return UNKNOWN if self.rejected else self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


class _Files(Dataset):
    """Image files decoded exactly as training decodes them (``decode_square``), then ``transform``."""

    def __init__(self, paths: Sequence[Path], transform, decode_size: int) -> None:
        self.paths, self.transform, self.decode_size = list(paths), transform, decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        square = decode_square(read_image_file(self.paths[i]), self.decode_size)
        return self.transform(torch.from_numpy(square).permute(2, 0, 1)), 0


def expand_image_paths(paths: Iterable[str | Path], problems: list | None = None) -> list[Path]:
    """Files as given, folders searched recursively for image files (hidden ones skipped). Entries of
    folders that cannot be read (broken links, FIFOs, devices) are added to ``problems``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = []
            out.extend(f for f in walk_files(p, found) if f.suffix.lower() in IMAGE_EXTENSIONS)
            if problems is not None:
                problems.extend(b for b in found if b.path.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"'{p}' does not exist. Check the path.")
    return out


class ImageClassifier:
    """A trained model ready to use: ``graftkit.load(run_dir).predict(["a.jpg"])``."""

    def __init__(self, model, meta: dict, device: str = "cpu", ood: OodScorer | None = None) -> None:
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))  # 1.0: older runs
        self.ood = ood
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
        scorer = load_scorer(resolve_model_path(path), meta["ood"], CheckpointError) if "ood" in meta else None
        return cls(model, meta, device, scorer)

    def _loader(self, paths: Sequence[Path]) -> DataLoader:
        return DataLoader(_Files(paths, self.transform, int(self.meta["preprocessing"]["resize"])),
                          batch_size=eval_batch_size(self.device))

    def _outputs(self, batches) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C)`` logits (uncalibrated) and ``(N, num_features)`` pooled features over ``batches``."""
        self.model.eval()
        with fold_frozen_batchnorm(self.model, enabled=bool(self.meta.get("fold_bn", False))), \
                capture_pooled(self.model) as rows:
            logits, _ = predict_logits(self.model, batches, self.device, channels_last=True, autocast=self.autocast)
        return logits.numpy(), torch.cat(rows).numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / temperature)`` (model.json's calibration)."""
        return softmax(logits, self.temperature).astype(np.float32)

    def predict_outputs(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features of readable image files, in order (decoded as training decodes)."""
        return self._outputs(self._loader([Path(p) for p in paths]))

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """``(N, num_classes)`` calibrated probabilities for readable image files, in order."""
        return self.probabilities(self.predict_outputs(paths)[0])

    def outputs_for_squares(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and pooled features for decoded ``(S, S, 3)`` uint8 squares
        (``S`` = ``meta["preprocessing"]["resize"]``), in order."""
        tensors = torch.stack([self.transform(torch.from_numpy(q).permute(2, 0, 1)) for q in squares])
        size = eval_batch_size(self.device)
        logits, features = self._outputs([(tensors[i:i + size], torch.zeros(0)) for i in range(0, len(tensors), size)])
        return self.probabilities(logits), features

    def unknown_scores(self, features: np.ndarray) -> np.ndarray | None:
        """p-values of the feature distance (low: unlike the training images), or None without a detector."""
        return None if self.ood is None else self.ood.score(features)

    def predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 1,
                on_skip=None, on_progress=None, reject_unknown: bool = False) -> list[Prediction]:
        """Top-k classes for every image under ``paths`` (files or folders). Unreadable files (and
        FIFOs, devices, files over ``MAX_FILE_BYTES``) are skipped and reported through
        ``on_skip(path, reason)``; ``on_progress(done, total)`` is called as files are read.
        ``reject_unknown``: images the unknown detector flags get the label ``"unknown"``."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"--top-k must be a whole number >= 1, got {top_k!r}")
        if reject_unknown and self.ood is None:
            raise ConfigError("this model has no unknown detector (model.json has no 'ood': it was trained by "
                              "an older graftkit). Retrain it, or predict without --reject-unknown.")
        good, probs, features = self._outputs_for_files(expand_paths_reporting(paths, on_skip), on_skip, on_progress)
        if not good:
            raise DataError(f"no readable images in {', '.join(map(str, paths))}. "
                            f"Pass image files or folders holding them.")
        scores = self.unknown_scores(features)
        k = min(top_k, len(self.classes))
        order = np.argsort(-probs, axis=1)[:, :k]
        out = []
        for i, (f, p, idx) in enumerate(zip(good, probs, order)):
            flagged = None if scores is None else bool(scores[i] < self.ood.threshold)
            out.append(Prediction(f, [(self.classes[j], float(p[j])) for j in idx],
                                  None if scores is None else float(scores[i]), flagged,
                                  bool(reject_unknown and flagged)))
        return out

    def _outputs_for_files(self, files: list[Path], on_skip=None,
                           on_progress=None) -> tuple[list[Path], np.ndarray, np.ndarray]:
        """Decode each file once (bad ones to ``on_skip``), in chunks that bound memory; their size
        is a multiple of the batch size, so batches match `graft evaluate`'s. Returns the files that
        decoded, their calibrated probabilities and pooled features."""
        size = int(self.meta["preprocessing"]["resize"])
        good, chunks = [], []
        if on_progress is not None:
            on_progress(0, len(files))
        for start in range(0, len(files), 256):
            squares = []
            for done, f in enumerate(files[start:start + 256], start + 1):
                try:
                    squares.append(decode_square(read_image_file(f), size))
                    good.append(f)
                except DECODE_ERRORS as exc:
                    if on_skip is not None:
                        on_skip(f, describe_image_error(exc))
                if on_progress is not None:
                    on_progress(done, len(files))
            if squares:
                chunks.append(self.outputs_for_squares(squares))
        if not chunks:
            return [], np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        return good, np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def evaluate(self, data_dir: str | Path, split: str = "val", skip_bad_images: bool = False,
                 ood_dir: str | Path | None = None, on_skip=None) -> dict:
        """Accuracy, per-class precision/recall/F1, confusion matrix, calibration (ECE, NLL before and
        after the temperature) on a labelled folder; with ``ood_dir``, unknown detection against it.

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
        logits, features = self.predict_outputs([s.path for s in samples])
        probs = self.probabilities(logits)
        labels = np.array(to_model)
        result = classification_metrics(labels, probs.argmax(1), self.classes)
        # as training computes val_loss (T = 1), so a run's figure is reproduced; calibrated: calibration.nll_after
        result["loss"] = log_loss(labels, softmax(logits).astype(np.float32))
        result["split"] = split
        result["data_dir"] = str(data_dir)
        result["calibration"] = calibration_figures(logits, labels, self.temperature, self.meta.get("calibration"))
        if ood_dir is not None:
            result["ood"] = self.evaluate_unknown(probs, features, labels, ood_dir, on_skip)
        return result

    def evaluate_unknown(self, probs: np.ndarray, features: np.ndarray, labels: np.ndarray,
                         ood_dir: str | Path, on_skip=None) -> dict:
        """Unknown detection with ``(probs, features, labels)`` of in-distribution images against every
        image under ``ood_dir``: AUROC, FPR at 95 % TPR and fractions rejected, for the feature
        distance and for the max calibrated probability; accuracy of the accepted images."""
        if self.ood is None:
            raise ConfigError("this model has no unknown detector (model.json has no 'ood': it was trained by "
                              "an older graftkit). Retrain it to evaluate --ood.")
        found, out_probs, out_features = self._outputs_for_files(expand_paths_reporting([ood_dir], on_skip), on_skip)
        if not found:
            raise DataError(f"no readable images under '{ood_dir}' (--ood). Pass a folder of images.")
        correct = probs.argmax(1) == labels
        result = {"ood_dir": str(ood_dir), "num_in": int(len(labels)), "num_out": len(found)}
        in_d, out_d = self.ood.distances(features), self.ood.distances(out_features)
        in_keep = p_values(in_d, self.ood.reference) >= self.ood.threshold
        out_keep = p_values(out_d, self.ood.reference) >= self.ood.threshold
        in_msp, out_msp = probs.max(1), out_probs.max(1)
        msp_cut = self.ood.msp_threshold if self.ood.msp_threshold is not None else 0.0
        for name, scores, keeps in (("feature_distance", (-in_d, -out_d), (in_keep, out_keep)),
                                    ("max_probability", (in_msp, out_msp), (in_msp >= msp_cut, out_msp >= msp_cut))):
            result[name] = {**detection_figures(*scores), "in_rejected": float(1 - keeps[0].mean()),
                            "out_rejected": float(1 - keeps[1].mean()),
                            "accepted_accuracy": float(correct[keeps[0]].mean()) if keeps[0].any() else None}
        return result


def expand_paths_reporting(paths: Iterable[str | Path], on_skip=None) -> list[Path]:
    """:func:`expand_image_paths`, reporting unreadable folder entries through ``on_skip(path, reason)``."""
    problems: list = []
    files = expand_image_paths(paths, problems)
    for bad in problems if on_skip is not None else ():
        on_skip(bad.path, bad.reason)
    return files


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float,
                        trained: dict | None) -> dict:
    """ECE and NLL of ``logits`` before (T = 1) and after the model's temperature, and the
    cross-fitted figures training recorded (``trained``: model.json's calibration, if any)."""
    return {"temperature": temperature,
            "ece_before": ece(softmax(logits), labels), "ece_after": ece(softmax(logits, temperature), labels),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
            "trained": trained}
