"""Image files → model input in numpy, without torch: what predict does before the forward pass.

Decoding is ``decode_square`` (EXIF applied, shorter side to ``resize``, centred square), as training
and ``graft predict`` decode; :func:`normalize_squares` is ``build_eval_transform`` (centre crop of
``image_size``, scale to [0, 1], ``(x - mean) / std``) in float32, computed as torchvision computes it,
so an ONNX model fed from here sees the inputs the PyTorch model sees (to float32 rounding).

``preprocessing`` is the dict of ``model.json`` (and of an exported model's metadata):
``{"image_size": 224, "resize": 256, "mean": [...], "std": [...]}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .decoded import decode_square
from .images import IMAGE_EXTENSIONS, read_image_file
from .scan import DECODE_ERRORS, describe_image_error, walk_files

CHUNK_SIZE = 256  # images decoded and predicted together: bounds memory on a folder of any size


def center_crop_anchor(size: int, crop: int) -> int:
    """Where torchvision's ``CenterCrop`` starts (Python's round, so 2.5 → 2)."""
    return int(round((size - crop) / 2.0))


TTA_CROPS = (1, 5)  # --tta-crops: the centre crop, or torchvision's five crops (centre and corners)


def check_tta(tta: bool, crops: int) -> None:
    """One-line errors for ``--tta``/``--tta-crops`` (``tta_crops`` in Python)."""
    if isinstance(crops, bool) or crops not in TTA_CROPS:
        raise ConfigError(f"--tta-crops must be 1 (the centre crop) or 5 (centre and four corners); got {crops!r}")
    if crops != 1 and not tta:
        raise ConfigError(f"--tta-crops {crops} needs --tta (test-time augmentation); add --tta or drop --tta-crops.")


def describe_tta(crops: int) -> str:
    """What ``--tta --tta-crops crops`` averages, in words, e.g. "centre crop + flip (2 views)"."""
    crop = "centre crop" if crops == 1 else f"{crops} crops (centre, corners)"
    return f"{crop} + horizontal flip ({2 * crops} views)"


def normalize_squares(squares: np.ndarray, preprocessing: Mapping) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 decoded squares → ``(N, 3, H, W)`` float32 model input, ``H = W =
    preprocessing["image_size"]``."""
    size = int(preprocessing["image_size"])
    top, left = center_crop_anchor(squares.shape[1], size), center_crop_anchor(squares.shape[2], size)
    crop = squares[:, top:top + size, left:left + size].astype(np.float32)
    crop *= np.float32(1.0 / 255)  # torchvision: to(float32).mul_(1 / 255)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    return np.ascontiguousarray(((crop - mean) / std).transpose(0, 3, 1, 2))


def preprocess_bytes(data: bytes, preprocessing: Mapping) -> np.ndarray:
    """The bytes of one image file → ``(3, H, W)`` float32 model input.

    Raises what ``decode_square`` raises for a file that does not decode (``DECODE_ERRORS``)."""
    square = decode_square(data, int(preprocessing["resize"]))
    return normalize_squares(square[None], preprocessing)[0]


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


UNKNOWN = "unknown"  # the label of an image the unknown detector rejects (predict --reject-unknown)


@dataclass(frozen=True)
class Prediction:
    path: Path | None  # None for an image given in memory (PIL, numpy, tensor): see its place in the list
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


def iter_square_chunks(paths: Sequence[str | Path] | str | Path, size: int, on_skip=None, on_progress=None,
                       chunk_size: int | None = None) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Every image under ``paths`` (files or folders) decoded to a ``size`` square, in chunks of
    ``(files, (n, size, size, 3) uint8)``. Unreadable files are skipped and reported through
    ``on_skip(path, reason)``; ``on_progress(done, total)`` follows the files read. Raises DataError
    when no file decodes."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    chunk_size = chunk_size or CHUNK_SIZE
    problems: list = []
    files = expand_image_paths(paths, problems)
    for bad in problems if on_skip is not None else ():
        on_skip(bad.path, bad.reason)
    if on_progress is not None:
        on_progress(0, len(files))
    any_good = False
    for start in range(0, len(files), chunk_size):
        good, squares = [], []
        for done, f in enumerate(files[start:start + chunk_size], start + 1):
            try:
                squares.append(decode_square(read_image_file(f), size))
                good.append(f)
            except DECODE_ERRORS as exc:
                if on_skip is not None:
                    on_skip(f, describe_image_error(exc))
            if on_progress is not None:
                on_progress(done, len(files))
        if squares:
            any_good = True
            yield good, np.stack(squares)
    if not any_good:
        raise DataError(f"no readable images in {', '.join(map(str, paths))}. "
                        f"Pass image files or folders holding them.")


def iter_predictions(paths: Sequence[str | Path] | str | Path, size: int, classes: Sequence[str],
                     proba: Callable[[np.ndarray], np.ndarray], top_k: int = 1, on_skip=None, on_progress=None,
                     chunk_size: int | None = None) -> Iterator[Prediction]:
    """Top-``top_k`` predictions, one chunk of files at a time: ``proba`` maps decoded squares
    ``(n, S, S, 3)`` uint8 to ``(n, num_classes)`` probabilities. Raises ConfigError for a bad
    ``top_k`` at once (not at the first ``next``)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k must be a whole number >= 1, got {top_k!r}")
    chunks = iter_square_chunks(paths, size, on_skip, on_progress, chunk_size)
    return _top_k(chunks, classes, proba, min(top_k, len(classes)))


def _top_k(chunks: Iterator[tuple[list[Path], np.ndarray]], classes: Sequence[str],
           proba: Callable[[np.ndarray], np.ndarray], k: int) -> Iterator[Prediction]:
    for files, squares in chunks:
        yield from to_predictions(files, proba(squares), classes, k)


def to_predictions(sources: Sequence[Path | None], probs: np.ndarray, classes: Sequence[str], k: int,
                   scores: np.ndarray | None = None, threshold: float = 0.0,
                   reject_unknown: bool = False) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` ``(N, num_classes)``: the top ``k`` classes and,
    given unknown ``scores`` (p-values), whether each is below ``threshold`` (and so rejected, with
    ``reject_unknown``)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    for i, (source, p, idx) in enumerate(zip(sources, probs, order)):
        flagged = None if scores is None else bool(scores[i] < threshold)
        out.append(Prediction(source, [(classes[j], float(p[j])) for j in idx],
                              None if scores is None else float(scores[i]), flagged,
                              bool(reject_unknown and flagged)))
    return out
