"""The images an export is checked (and an int8 model calibrated) on, and the check itself.

Images come from the run's own data when its folder is still there (the val split for the check, a
seeded sample of the train split for int8 calibration: never the images the check scores), else from
``--check-images DIR``, else generated images (with a warning: the figures then say little).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.decoded import decode_square
from ..data.images import read_image_file
from ..data.model_input import expand_image_paths, normalize_squares
from ..data.scan import DECODE_ERRORS, scan_data
from ..errors import GraftError

MAX_CHECK_IMAGES = 1000  # a seeded sample beyond this
CALIBRATION_IMAGES = 300
GENERATED_IMAGES = 16
BATCH_SIZE = 32


@dataclass(frozen=True)
class ImageSet:
    """Decoded ``(N, S, S, 3)`` uint8 squares; ``labels`` are model class indices (-1: unknown)."""
    squares: np.ndarray
    labels: np.ndarray
    source: str
    generated: bool = False


def run_data_dir(meta: dict, folder: Path) -> Path | None:
    """The folder the run was trained on: ``model.json``'s ``data_dir``, else ``config.json``'s."""
    data_dir = meta.get("data_dir")
    if data_dir is None:
        try:
            data_dir = json.loads((folder / "config.json").read_text()).get("data_dir")
        except (OSError, ValueError, AttributeError):
            return None
    return Path(data_dir) if isinstance(data_dir, str) and Path(data_dir).is_dir() else None


def _sample(items: list, limit: int, seed: int = 0) -> list:
    if len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]


def _decode(paths: list[Path], labels: list[int], size: int, source: str) -> ImageSet | None:
    squares, kept = [], []
    for path, label in zip(paths, labels):
        try:
            squares.append(decode_square(read_image_file(path), size))
            kept.append(label)
        except DECODE_ERRORS:
            continue  # the scan listed it as readable; a file changed since is simply left out
    if not squares:
        return None
    return ImageSet(np.stack(squares), np.array(kept), f"{len(squares)} {source}")


def generated_images(size: int, count: int = GENERATED_IMAGES, seed: int = 0) -> ImageSet:
    """Smooth random colour fields (upsampled noise): inputs with structure, not photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 8, 8, 3)).astype(np.float32)
    squares = np.repeat(np.repeat(coarse, -(-size // 8), axis=1), -(-size // 8), axis=2)[:, :size, :size]
    noise = rng.normal(0, 12, squares.shape)
    return ImageSet(np.clip(squares + noise, 0, 255).astype(np.uint8), np.full(count, -1),
                    f"{count} generated images", generated=True)


def find_images(meta: dict, folder: Path, check_dir: Path | None, split: str,
                warn: Callable[[str], None]) -> ImageSet:
    """Images for checking (``split="val"``) or calibrating (``split="train"``) an export."""
    size = int(meta["preprocessing"]["resize"])
    limit = MAX_CHECK_IMAGES if split == "val" else CALIBRATION_IMAGES
    data_dir = run_data_dir(meta, folder)
    if data_dir is not None:
        split_cfg = meta.get("split", {})
        try:
            scan = scan_data(data_dir, float(split_cfg.get("val_fraction", 0.2)), int(split_cfg.get("seed", 0)),
                             skip_bad_images=True)
        except GraftError as exc:
            warn(f"the run's data '{data_dir}' cannot be used ({exc})")
        else:
            samples = _sample(scan.val if split == "val" else scan.train, limit)
            classes = list(meta["classes"])
            labels = [classes.index(scan.classes[s.label]) if scan.classes[s.label] in classes else -1
                      for s in samples]
            found = _decode([s.path for s in samples], labels, size, f"{split} images of {data_dir}")
            if found is not None:
                return found
    if check_dir is not None:
        paths = _sample(expand_image_paths([check_dir]), limit)
        found = _decode(paths, [-1] * len(paths), size, f"images of {check_dir}")
        if found is not None:
            return found
        warn(f"no readable images in --check-images '{check_dir}'")
    warn(f"the run's data is not readable here and no --check-images DIR was given: {'checking' if split == 'val' else 'calibrating'} "
         f"on generated images, not photos. Pass --check-images DIR with real images of these classes.")
    return generated_images(size)


def compare_outputs(module: nn.Module, run_export: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    images: ImageSet, preprocessing: dict) -> dict:
    """Run the PyTorch model (fp32, eager) and the export on the same inputs, one image first (the
    dynamic batch dimension at 1), then batches of 32; return the differences and agreements."""
    reference, exported, features_diff = [], [], 0.0
    bounds = [0, 1, *range(1 + BATCH_SIZE, len(images.squares), BATCH_SIZE), len(images.squares)]
    for start, end in zip(bounds, bounds[1:]):
        if start >= end:
            continue
        inputs = normalize_squares(images.squares[start:end], preprocessing)
        with torch.no_grad():
            logits, features = module(torch.from_numpy(inputs))
        got_logits, got_features = run_export(inputs)
        reference.append(logits.numpy())
        exported.append(np.asarray(got_logits, dtype=np.float32))
        features_diff = max(features_diff, float(np.abs(features.numpy() - got_features).max()))
    reference, exported = np.concatenate(reference), np.concatenate(exported)
    known = images.labels >= 0
    result = {"images": int(len(reference)), "source": images.source, "generated": images.generated,
              "max_abs_logit_diff": float(np.abs(reference - exported).max()),
              "max_abs_feature_diff": features_diff,
              "top1_agreement": float((reference.argmax(1) == exported.argmax(1)).mean())}
    if known.any():
        result["accuracy_pytorch"] = float((reference.argmax(1)[known] == images.labels[known]).mean())
        result["accuracy_export"] = float((exported.argmax(1)[known] == images.labels[known]).mean())
        result["labelled_images"] = int(known.sum())
    return result
