"""Using a trained model: predict images, evaluate on a labelled folder."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .calibration import ece, mean_softmax, nll
from .config import DEVICES
from .data import build_eval_transform, decode_square, scan_data
from .data.decoded import image_square
from .data.images import read_image_file
from .data.model_input import Prediction, check_tta, describe_tta, expand_image_paths, to_predictions
from .data.scan import DECODE_ERRORS, describe_image_error
from .data.transforms import build_tta_transform
from .engine.checkpoint import load_model, resolve_model_path
from .engine.features import capture_pooled
from .engine.fusion import fold_frozen_batchnorm
from .engine.loop import predict_logits
from .engine.runtime import autocast_for, eval_batch_size, resolve_device
from .errors import CheckpointError, ConfigError, DataError
from .metrics import classification_metrics, log_loss
from .ood import OodScorer, detection_figures, load_scorer, p_values


ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


class _Files(Dataset):
    """Image files decoded exactly as training decodes them (``decode_square``), then ``transform``."""

    def __init__(self, paths: Sequence[Path], transform, decode_size: int) -> None:
        self.paths, self.transform, self.decode_size = list(paths), transform, decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        square = decode_square(read_image_file(self.paths[i]), self.decode_size)
        return self.transform(torch.from_numpy(square).permute(2, 0, 1)), 0


def in_memory_square(image: Image.Image | np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """An image in memory → the ``(size, size, 3)`` uint8 square its file would decode to.

    Accepts a Pillow image (any mode), a numpy array ``(H, W, 3)`` uint8 RGB, or a tensor
    ``(3, H, W)``: uint8 0-255, or floating point 0-1 (``torchvision.transforms.functional.to_tensor``'s
    range; it is rounded to uint8 as a saved file would be).
    """
    if isinstance(image, Image.Image):
        return image_square(image, size)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"an image tensor must be (3, H, W), got shape {tuple(image.shape)}; pass a batch "
                              f"(B, 3, H, W) as a list or as a 4-d tensor.")
        if image.is_floating_point():
            image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise ConfigError(f"an image tensor must be uint8 (0-255) or float (0-1), got {image.dtype}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ConfigError(f"a numpy image must be (H, W, 3) uint8 RGB, got shape {array.shape} {array.dtype}; "
                          f"convert it with np.asarray(pil_image.convert('RGB')).")
    return image_square(Image.fromarray(np.ascontiguousarray(array), "RGB"), size)


def _as_items(images) -> list:
    """One input or a sequence of them; a 4-d array or tensor is a batch of images."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    return list(images)


class ImageClassifier:
    """A trained model ready to use: ``graftkit.load(run_dir).predict(["a.jpg"])``.

    ``predict``/``logits``/``features`` take image files, folders, Pillow images, numpy arrays
    ``(H, W, 3)`` uint8 and tensors ``(3, H, W)`` (uint8, or float 0-1), one or a list, and
    preprocess them exactly as training's validation images were. ``predict``, ``iter_predict`` and
    ``evaluate`` take ``tta=True`` (test-time augmentation: the calibrated probabilities of the centre
    crop and its mirror image, averaged; ``tta_crops=5``: of five crops and their mirror images).
    Underneath:

    Attributes:
        model: the ``torch.nn.Module`` (:class:`graftkit.heads.Classifier`: ``model.backbone``
            then ``model.head``), in eval mode on ``device``; takes ``(B, 3, S, S)`` normalised images.
        transform: ``(3, R, R)`` uint8 square → ``(3, S, S)`` normalised float (centre crop,
            scale, mean/std), with ``R = meta["preprocessing"]["resize"]``, ``S = image_size``.
        classes: class names, in the order of the logits.
        meta: what ``model.json`` holds.
        temperature: the calibration temperature (``model.json``'s calibration; 1.0 for older runs).
        ood: the unknown detector (:class:`graftkit.ood.OodScorer`), or None for older runs.
    """

    def __init__(self, model, meta: dict, device: str = "cpu", run_dir: Path | None = None,
                 ood: OodScorer | None = None) -> None:
        if device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.meta = meta
        self.run_dir = run_dir
        self.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))  # 1.0: older runs
        self.ood = ood
        self.classes: list[str] = list(meta["classes"])
        pre = meta["preprocessing"]
        self.image_size = int(pre["image_size"])
        self.transform = build_eval_transform(self.image_size, pre["mean"], pre["std"])
        self.autocast = autocast_for(self.device, str(meta.get("precision", "fp32")))

    @classmethod
    def from_run(cls, path: str | Path, device: str = "cpu") -> "ImageClassifier":
        """Load a run folder (or its model.json); ``device``: auto | cpu | cuda."""
        model, meta = load_model(path)
        run_dir = resolve_model_path(path)
        scorer = load_scorer(run_dir, meta["ood"], CheckpointError) if "ood" in meta else None
        return cls(model, meta, device, run_dir=run_dir, ood=scorer)

    def _views(self, tta: bool = False, tta_crops: int = 1):
        """The transform of a decoded square: the evaluation crop, or the views of test-time augmentation."""
        check_tta(tta, tta_crops)
        if not tta:
            return self.transform
        pre = self.meta["preprocessing"]
        return build_tta_transform(self.image_size, pre["mean"], pre["std"], tta_crops)

    def _batch_size(self, transform) -> int:
        """Images per forward pass: the device's evaluation batch, in views (``--tta``: 2 or 10 per image)."""
        return max(1, eval_batch_size(self.device) // getattr(transform, "views", 1))

    def _loader(self, paths: Sequence[Path], transform=None) -> DataLoader:
        transform = transform or self.transform
        return DataLoader(_Files(paths, transform, int(self.meta["preprocessing"]["resize"])),
                          batch_size=self._batch_size(transform))

    def _outputs(self, batches) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C)`` logits (uncalibrated) and ``(N, num_features)`` pooled features over ``batches``.
        Batches of views ``(B, V, 3, S, S)`` (test-time augmentation) give ``(N, V, C)`` logits and the
        features of view 0, the evaluation crop (what the unknown detector was fitted on)."""
        self.model.eval()
        views = []

        def flat(batches):
            for images, labels in batches:
                if images.dim() == 5:
                    views[:] = [images.shape[1]]
                    images = images.flatten(0, 1)
                yield images, labels

        with fold_frozen_batchnorm(self.model, enabled=bool(self.meta.get("fold_bn", False))), \
                capture_pooled(self.model) as rows:
            logits, _ = predict_logits(self.model, flat(batches), self.device, channels_last=True,
                                       autocast=self.autocast)
        logits, features = logits.numpy(), torch.cat(rows).numpy()
        if views:
            logits = logits.reshape(-1, views[0], logits.shape[1])
            features = features.reshape(-1, views[0], features.shape[1])[:, 0]
        return logits, features

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / temperature)`` (model.json's calibration);
        ``(N, V, C)`` logits of ``V`` views: averaged over the views."""
        return mean_softmax(logits, self.temperature).astype(np.float32)

    def predict_outputs(self, paths: Sequence[str | Path], tta: bool = False,
                        tta_crops: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features of readable image files, in order (decoded as training decodes);
        with ``tta``, ``(N, V, C)`` logits of the views (see :meth:`_outputs`)."""
        return self._outputs(self._loader([Path(p) for p in paths], self._views(tta, tta_crops)))

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """``(N, num_classes)`` calibrated probabilities for readable image files, in order."""
        return self.probabilities(self.predict_outputs(paths)[0])

    def _square_outputs(self, squares: Sequence[np.ndarray], transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features for decoded ``(S, S, 3)`` uint8 squares, in order."""
        transform = transform or self.transform
        tensors = torch.stack([transform(torch.from_numpy(q).permute(2, 0, 1)) for q in squares])
        size = self._batch_size(transform)
        return self._outputs([(tensors[i:i + size], torch.zeros(0)) for i in range(0, len(tensors), size)])

    def outputs_for_squares(self, squares: Sequence[np.ndarray], tta: bool = False,
                            tta_crops: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and pooled features for decoded ``(S, S, 3)`` uint8 squares
        (``S`` = ``meta["preprocessing"]["resize"]``), in order."""
        logits, features = self._square_outputs(squares, self._views(tta, tta_crops))
        return self.probabilities(logits), features

    def unknown_scores(self, features: np.ndarray) -> np.ndarray | None:
        """p-values of the feature distance (low: unlike the training images), or None without a detector."""
        return None if self.ood is None else self.ood.score(features)

    def _each_square(self, images, on_skip=None, on_progress=None, chunk: int = 256):
        """Yield ``(sources, squares)`` chunks: every input decoded as training decodes files. Files
        that cannot be read are reported through ``on_skip(path, reason)`` (or raise without it)."""
        size = int(self.meta["preprocessing"]["resize"])
        problems: list = []
        items = [f for item in _as_items(images) for f in (
            expand_image_paths([item], problems) if isinstance(item, (str, os.PathLike)) else [item])]
        for bad in problems if on_skip is not None else ():
            on_skip(bad.path, bad.reason)
        if on_progress is not None:
            on_progress(0, len(items))
        # Decode each file once: the squares that decode are the ones predicted (chunks bound memory;
        # their size is a multiple of the batch size, so batches match `graft evaluate`'s).
        for start in range(0, len(items), chunk):
            sources, squares = [], []
            for done, item in enumerate(items[start:start + chunk], start + 1):
                if not isinstance(item, Path):
                    sources.append(None)
                    squares.append(in_memory_square(item, size))
                    continue
                try:
                    squares.append(decode_square(read_image_file(item), size))
                    sources.append(item)
                except DECODE_ERRORS as exc:
                    if on_skip is None:
                        raise DataError(f"cannot read '{item}': {describe_image_error(exc)}") from None
                    on_skip(item, describe_image_error(exc))
                if on_progress is not None:
                    on_progress(done, len(items))
            if squares:
                yield sources, squares

    def logits(self, images) -> torch.Tensor:
        """``(N, num_classes)`` float logits (before the temperature) for ``images`` (see the class
        docstring), in order."""
        return torch.cat([torch.from_numpy(self._square_outputs(q)[0]) for _, q in self._each_square(images)])

    def features(self, images) -> torch.Tensor:
        """``(N, num_features)`` pooled backbone features (the head's input) for ``images``, in order:
        for a nearest-neighbour search, clustering, or a classifier of your own."""
        return torch.cat([torch.from_numpy(self._square_outputs(q)[1]) for _, q in self._each_square(images)])

    def _outputs_for_images(self, images, on_skip=None, on_progress=None) -> tuple[list, np.ndarray, np.ndarray]:
        """The inputs that decoded (a path, or None for an image in memory), their calibrated
        probabilities and pooled features, decoded in chunks that bound memory."""
        good, chunks = [], []
        for sources, squares in self._each_square(images, on_skip, on_progress):
            good.extend(sources)
            chunks.append(self.outputs_for_squares(squares))
        if not chunks:
            return [], np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        return good, np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def iter_predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 1, on_skip=None,
                     on_progress=None, reject_unknown: bool = False, tta: bool = False,
                     tta_crops: int = 1) -> Iterator[Prediction]:
        """Top-k classes for every image: files, folders (searched recursively), Pillow images, numpy
        arrays ``(H, W, 3)`` uint8, tensors ``(3, H, W)`` (uint8, or float 0-1); one, or a list
        (a 4-d array or tensor is a batch). Decoded exactly as training decodes files, predicted and
        yielded a chunk at a time (memory stays bounded on a folder of any size). Unreadable files
        (and FIFOs, devices, files over ``MAX_FILE_BYTES``) are skipped and reported through
        ``on_skip(path, reason)``; ``on_progress(done, total)`` is called as images are read.
        Probabilities are calibrated (the model's temperature). ``reject_unknown``: images the
        unknown detector flags get the label ``"unknown"``. ``tta``/``tta_crops``: test-time
        augmentation (see the class docstring). Bad arguments raise at once."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"--top-k must be a whole number >= 1, got {top_k!r}")
        if reject_unknown and self.ood is None:
            raise ConfigError(f"this model has no unknown detector (model.json has no 'ood': {self._no_ood_why()}). "
                              "Predict without --reject-unknown.")
        check_tta(tta, tta_crops)
        return self._predictions(images, min(top_k, len(self.classes)), on_skip or (lambda path, reason: None),
                                 on_progress, reject_unknown, tta, tta_crops)

    def _predictions(self, images, k: int, on_skip, on_progress, reject_unknown: bool, tta: bool = False,
                     tta_crops: int = 1) -> Iterator[Prediction]:
        any_good = False
        for sources, squares in self._each_square(images, on_skip, on_progress):
            probs, features = self.outputs_for_squares(squares, tta, tta_crops)
            scores = self.unknown_scores(features)
            threshold = self.ood.threshold if self.ood is not None else 0.0
            any_good = True
            yield from to_predictions(sources, probs, self.classes, k, scores, threshold, reject_unknown)
        if not any_good:
            shown = ", ".join(map(str, _as_items(images)))[:300]
            raise DataError(f"no readable images in {shown}. Pass image files or folders holding them.")

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 1, on_skip=None, on_progress=None,
                reject_unknown: bool = False, tta: bool = False, tta_crops: int = 1) -> list[Prediction]:
        """:meth:`iter_predict` as a list."""
        return list(self.iter_predict(images, top_k, on_skip, on_progress, reject_unknown, tta, tta_crops))

    def _no_ood_why(self) -> str:
        if self.meta.get("strategy") == "ensemble":
            return "'graft ensemble' joins the members' classifiers, not their detectors; use a member's run folder"
        return "it was trained by an older graftkit; retrain it to have one"

    def trained_on(self) -> Path | None:
        """The data folder the run was trained on (its config.json), if known."""
        return trained_on(self.run_dir)

    def _validated_on(self) -> list[Path]:
        """The folders whose hold-out is the run's validation set: its data folder, and for a run
        trained on a subsample (``graft label-efficiency``), the folder it was drawn from."""
        folders = [self.trained_on()]
        try:
            folders.append(Path(json.loads((self.run_dir / "subsample.json").read_text())["source"]))
        except (TypeError, OSError, ValueError, KeyError):
            pass
        return [f for f in folders if f is not None]

    def evaluate(self, data_dir: str | Path, split: str = "auto", skip_bad_images: bool = False,
                 ood_dir: str | Path | None = None, on_skip=None, tta: bool = False, tta_crops: int = 1) -> dict:
        """Accuracy, per-class precision/recall/F1, confusion matrix, calibration (ECE, NLL before and
        after the temperature) on a labelled folder; with ``ood_dir``, unknown detection against it.

        Args:
            data_dir: a folder with train/ and val/, or with one folder per class.
            split: ``auto`` scores what ``data_dir`` holds: the run's own data folder → the exact
                validation images it was trained against (so the figures reproduce metrics.json);
                another folder with train/ and val/ → its val/; any other folder of classes → all
                of it. ``val``, ``train``, ``all`` pick that part explicitly (a class-folder root's
                val is the hold-out seeded as the run's).
            tta, tta_crops: test-time augmentation (see the class docstring): every figure is of the
                probabilities averaged over the views.

        Returns:
            The metrics, with ``split`` (the one used), ``scored`` (which images, in words),
            ``num_images`` and ``tta`` (the views averaged, in words, or None).
        """
        if split not in ("auto", "val", "train", "all"):
            raise DataError(f"--split must be auto, val, train or all; got {split!r}")
        check_tta(tta, tta_crops)
        split_cfg = self.meta.get("split", {})
        val_fraction, seed = float(split_cfg.get("val_fraction", 0.2)), int(split_cfg.get("seed", 0))
        scan = scan_data(data_dir, val_fraction, seed, skip_bad_images=skip_bad_images)
        unknown = sorted(set(scan.classes) - set(self.classes))
        if unknown:
            raise CheckpointError(f"'{data_dir}' has classes the model does not know: {', '.join(unknown)} "
                                  f"(model classes: {', '.join(self.classes)}). Evaluate on matching data "
                                  f"or retrain.")
        own = Path(data_dir).resolve() in {p.resolve() for p in self._validated_on()}
        if split == "auto":
            split = "val" if own or scan.layout == "splits" else "all"
        samples = {"val": scan.val, "train": scan.train, "all": [*scan.train, *scan.val]}[split]
        if not samples:
            raise DataError(f"'{data_dir}' has no images in split {split!r}.")
        to_model = [self.classes.index(scan.classes[s.label]) for s in samples]
        logits, features = self.predict_outputs([s.path for s in samples], tta, tta_crops)
        about = {"split": split, "data_dir": str(data_dir),
                 "scored": scored_text(Path(data_dir), split, scan.layout, own, val_fraction, seed)}
        return self.score_outputs(logits, features, np.array(to_model), about, tta_crops if tta else None, ood_dir,
                                  on_skip)

    def score_outputs(self, logits: np.ndarray, features: np.ndarray, labels: np.ndarray, about: dict,
                      tta_crops: int | None = None, ood_dir: str | Path | None = None, on_skip=None) -> dict:
        """:meth:`evaluate`'s figures from the outputs of :meth:`predict_outputs` on labelled images
        (``labels`` in the model's class order); ``about`` (split, data_dir, scored) goes into the result."""
        probs = self.probabilities(logits)
        result = classification_metrics(labels, probs.argmax(1), self.classes)
        # as training computes val_loss (T = 1), so a run's figure is reproduced; calibrated: calibration.nll_after
        result["loss"] = log_loss(labels, mean_softmax(logits).astype(np.float32))
        result["tta"] = describe_tta(tta_crops) if tta_crops is not None else None
        result.update(about)
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
            raise ConfigError(f"this model has no unknown detector (model.json has no 'ood': {self._no_ood_why()}). "
                              "Evaluate without --ood.")
        found, out_probs, out_features = self._outputs_for_images([Path(ood_dir)], on_skip or (lambda path, reason: None))
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

def trained_on(run_dir: Path | None) -> Path | None:
    """The data folder a run folder was trained on (its config.json), if known."""
    try:
        return Path(json.loads((run_dir / "config.json").read_text())["data_dir"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def scored_text(data_dir: Path, split: str, layout: str, own: bool, val_fraction: float, seed: int) -> str:
    """Which images an evaluation scored, in words, e.g. "all of hymenoptera/val"."""
    if split == "all":
        return f"all of {data_dir}"
    if layout == "splits":
        return f"{data_dir / split}" + (", the run's validation set" if own and split == "val" else "")
    held_out = f"the {val_fraction:.0%} hold-out per class, seed {seed}"
    part = held_out if split == "val" else f"all but {held_out}"
    whose = "the run's " if own else ""
    return f"{whose}{split} split of {data_dir} ({part})"


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float,
                        trained: dict | None) -> dict:
    """ECE and NLL of ``logits`` before (T = 1) and after the model's temperature, and the
    cross-fitted figures training recorded (``trained``: model.json's calibration, if any).
    ``(N, V, C)`` logits of ``V`` views: of the probabilities averaged over the views."""
    before, after = mean_softmax(logits), mean_softmax(logits, temperature)
    if logits.ndim == 2:
        nll_before, nll_after = nll(logits, labels), nll(logits, labels, temperature)
    else:
        nll_before, nll_after = log_loss(labels, before), log_loss(labels, after)
    return {"temperature": temperature, "ece_before": ece(before, labels), "ece_after": ece(after, labels),
            "nll_before": nll_before, "nll_after": nll_after, "trained": trained}
