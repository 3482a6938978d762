"""Find and validate an image-folder dataset before the first batch.

``scan_data`` is what ``graft check-data`` runs and what training runs first. Layouts:

* ``DATA_DIR/train/<class>/*`` + ``DATA_DIR/val/<class>/*`` (``valid/`` and ``validation/`` too);
* ``DATA_DIR/<class>/*``: then a seeded, stratified split holds out ``val_fraction`` per class.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, PIL_ERRORS, UnreadableImage, is_image_name, load_image, read_image_file

TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test", "testing")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str


@dataclass
class DataScan:
    """What was found: classes, the two splits, and every file left out (with why)."""

    root: Path
    layout: str  # "splits" or "classes"
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    bad: list[BadFile] = field(default_factory=list)       # image names that do not decode
    ignored: list[BadFile] = field(default_factory=list)   # files that are not images by name
    warnings: list[str] = field(default_factory=list)

    def class_counts(self, split: str) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for s in getattr(self, split):
            counts[self.classes[s.label]] += 1
        return counts

    def skipped_csv(self) -> str:
        """``skipped.csv``: ``path,reason`` rows, csv-quoted (names may hold commas, tabs, newlines)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "reason"])
        writer.writerows([str(b.path), b.reason] for b in [*self.bad, *self.ignored])
        return buffer.getvalue()


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in ("__MACOSX", "Thumbs.db", "desktop.ini")


# Files only graftkit writes: a folder holding them is a run or subsample output, never a class.
_OUTPUT_MARKERS = ("subsample.json", "lr_find.json", "label_efficiency.json", "compare.json")


def is_graftkit_output(folder: Path) -> bool:
    """A run folder (model.json or history.jsonl beside config.json/metrics.json) or the output of
    ``graft subsample``, ``lr-find``, ``label-efficiency`` or ``compare``."""
    has = lambda name: (folder / name).is_file()  # noqa: E731
    return any(has(n) for n in _OUTPUT_MARKERS) or (
        (has("model.json") or has("history.jsonl")) and (has("metrics.json") or has("config.json")))


def _subdirs(path: Path, outputs: list[Path] | None = None) -> list[Path]:
    """Visible sub-folders; graftkit's own output folders go to ``outputs`` instead, if given."""
    try:
        with os.scandir(path) as it:
            found = sorted(Path(e.path) for e in it if _visible(e) and e.is_dir())
        if outputs is None:
            return found
        ours = [d for d in found if is_graftkit_output(d)]
        outputs.extend(ours)
        return [d for d in found if d not in ours]
    except PermissionError:
        raise DataError(f"cannot read folder '{path}': permission denied. Fix its permissions.") from None


def walk_files(folder: Path, problems: list[BadFile] | None = None,
                outputs: list[Path] | None = None) -> list[Path]:
    """Files below ``folder`` (recursive, hidden skipped, each real folder visited once so symlink
    loops end). Entries that cannot be read are added to ``problems``; graftkit's own output
    folders are left out and added to ``outputs``, if given."""
    out, seen = [], set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            key = current.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a symlink loop
            if problems is not None:
                problems.append(BadFile(current, "unreadable link (broken or a symlink loop)"))
            continue
        if key in seen:
            continue
        seen.add(key)
        if outputs is not None and current != folder and is_graftkit_output(current):
            outputs.append(current)
            continue
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if problems is not None:
                problems.append(BadFile(current, f"cannot list folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            if not _visible(entry):
                continue
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    out.append(Path(entry.path))
                elif problems is not None and (entry.is_symlink() and not os.path.exists(entry.path)):
                    problems.append(BadFile(Path(entry.path), "unreadable link (broken or a symlink loop)"))
                elif problems is not None:
                    problems.append(BadFile(Path(entry.path), "not a regular file (a FIFO, socket or device)"))
            except OSError:
                if problems is not None:
                    problems.append(BadFile(Path(entry.path), "unreadable link (broken or a symlink loop)"))
    return sorted(out)


def describe_image_error(exc: BaseException) -> str:
    """A short reason for a failed decode, as listed in errors and skipped.csv."""
    if isinstance(exc, UnreadableImage):
        return str(exc)
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too many pixels (decompression-bomb guard)"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image (unrecognised content)"
    message = str(exc).strip() or type(exc).__name__
    return "truncated" if "truncated" in message.lower() else f"cannot decode ({message[:80]})"


DECODE_ERRORS = PIL_ERRORS  # with UnreadableImage (a ValueError): every failure of a file to decode


def check_image(path: Path, min_size: int | None = 64,
                on_bytes: Callable[[Path, bytes], None] | None = None) -> str | None:
    """Fully decode ``path``; return why it is unusable, or None when it is fine.

    ``on_bytes(path, data)`` sees the file's bytes once read (e.g. to hash them without a second read)."""
    try:
        data = read_image_file(path)
        if on_bytes is not None:
            on_bytes(path, data)
        if not data:
            return "empty file (0 bytes)"
        img = load_image(io.BytesIO(data), min_size=min_size)
        if img.width < 1 or img.height < 1:
            return "image has no pixels"
    except DECODE_ERRORS as exc:
        return describe_image_error(exc)
    return None


def _read_class_folders(split_dir: Path, outputs: list[Path]) -> dict[str, tuple[list[Path], list[BadFile]]]:
    """``{class: (image paths, non-image files)}`` for each class folder of one split; graftkit's
    output folders (and folders holding nothing else) go to ``outputs``."""
    result = {}
    for class_dir in _subdirs(split_dir, outputs):
        images, others, problems, inside = [], [], [], []
        for f in walk_files(class_dir, problems, inside):
            (images if is_image_name(f) else others).append(f)
        if inside and not (images or others or problems):  # nothing but graftkit's output below it
            outputs.append(class_dir)
            continue
        outputs.extend(inside)
        result[class_dir.name] = (images, [BadFile(f, "not an image file name") for f in others] + problems)
    return result


def _looks_like_split_root(data_dir: Path, class_dirs: list[Path]) -> bool:
    """Every top folder holds only sub-folders (no images), they share names, and the top folders
    or the shared names are split names (train, val, test...): splits, not classes."""
    if len(class_dirs) < 2:
        return False
    names = []
    for d in class_dirs:
        with os.scandir(d) as it:
            entries = [e for e in it if _visible(e)]
        if any(e.is_file() and is_image_name(Path(e.name)) for e in entries):
            return False
        names.append({e.name for e in entries if e.is_dir()})
    shared = set.intersection(*names)
    if not all(len(n) >= 2 for n in names) or not shared:
        return False
    # Classes may share sub-folders (cats/2019, dogs/2019): only split names make it a split root.
    return all(_split_like(d.name) for d in class_dirs) or any(_split_like(n) for n in shared)


_SPLIT_WORDS = {*TRAIN_NAMES, *VAL_NAMES, *TEST_NAMES, "trainset", "valset", "testset", "trainval", "eval",
                "evaluation", "holdout"}


def _split_like(name: str) -> bool:
    """``train``, ``val``, ``test_set``, ``training-set``, ``Validation 2``...: a name of a split."""
    return any(word in _SPLIT_WORDS for word in re.split(r"[^a-z]+", name.lower()))


def _split_key(seed: int, cls: str, path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return hashlib.sha256(f"{seed}:{cls}/{rel}".encode()).hexdigest()


def scan_data(data_dir: str | Path, val_fraction: float = 0.2, seed: int = 0,
              skip_bad_images: bool = False, verify: bool = True, min_size: int | None = 64,
              num_threads: int | None = None,
              checker: Callable[[Path], str | None] | None = None) -> DataScan:
    """Find classes and images under ``data_dir`` and validate them.

    Args:
        data_dir: a split root (``train/`` + ``val/``) or a folder of class folders.
        val_fraction: share of each class held out for validation when there is no ``val/``.
        seed: seeds the split (the same seed gives the same split on any machine).
        skip_bad_images: leave undecodable files out (listed in ``bad``) instead of failing.
        verify: decode every image (slow for huge folders, catches truncated files).
        checker: ``checker(path) -> reason or None`` replaces the default decode check (training
            passes one that also fills the decoded-image cache, so each image is decoded once).

    Raises:
        DataError: a fatal problem, with the folder or files named and the fix.
    """
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist. Check the path.")
    if not root.is_dir():
        raise DataError(f"'{root}' is a file, not a folder. Pass a folder of class folders "
                        f"(or with train/ and val/).")
    outputs: list[Path] = []  # graftkit's own run/subsample folders under root: never classes
    top = _subdirs(root, outputs)
    by_name = {d.name.lower(): d for d in top}
    train_dir = next((by_name[n] for n in TRAIN_NAMES if n in by_name), None)
    val_dir = next((by_name[n] for n in VAL_NAMES if n in by_name), None)
    scan_warnings: list[str] = []

    if train_dir is None and val_dir is not None:
        raise DataError(f"'{root}' has '{val_dir.name}/' but no 'train/' folder. "
                        f"Add train/ with one folder per class.")
    if train_dir is not None:
        layout = "splits"
        train_found = _read_class_folders(train_dir, outputs)
        if val_dir is not None:
            val_found = _read_class_folders(val_dir, outputs)
            if not val_found:
                loose = [f for f in walk_files(val_dir) if is_image_name(f)]
                what = f"{len(loose)} images directly but no class folders" if loose else "no class folders"
                raise DataError(f"'{val_dir}' holds {what}. Put them in one folder per class "
                                f"('{val_dir}/<class>/', as in '{train_dir.name}/'), or remove "
                                f"'{val_dir.name}/' to hold out part of '{train_dir.name}/' instead.")
        else:
            val_found = None
            scan_warnings.append(f"no val/ folder in '{root}': holding out {val_fraction:.0%} of "
                                 f"train/ per class (seed {seed})")
        for name in TEST_NAMES:
            if name in by_name:
                scan_warnings.append(f"'{by_name[name]}' is not used for training or validation")
        class_root = train_dir
    else:
        layout = "classes"
        if not top:
            images_here = [f for f in walk_files(root) if is_image_name(f)]
            hint = (f" It holds {len(images_here)} images directly: put them in one folder per class."
                    if images_here else "")
            raise DataError(f"no class folders in '{root}'.{hint} Expected '{root}/<class>/<images>' "
                            f"or '{root}/train/<class>/' and '{root}/val/<class>/'.")
        if _looks_like_split_root(root, top):
            names = ", ".join(f"'{d.name}/'" for d in top)
            raise DataError(f"'{root}' holds {names}, which look like splits, not classes "
                            f"(they contain class folders, no images). Rename them to train/ and "
                            f"val/, or pass one of them as DATA_DIR.")
        train_found, val_found = _read_class_folders(root, outputs), None
        class_root = root

    for split_name, found, where in (("train", train_found, class_root),
                                     ("val", val_found or {}, val_dir)):
        for cls, (images, others) in found.items():
            if not images:
                seen = ", ".join(f"'{o.path.name}'" for o in others[:3])
                also = f"; found {seen}" if seen else ""
                raise DataError(f"class folder '{where / cls}' has no images (looked for "
                                f"{' '.join(IMAGE_EXTENSIONS)}{also}). Add images or delete the folder.")
    classes = sorted(train_found)
    if len(classes) < 2:
        which = f" (only '{classes[0]}')" if classes else ""
        raise DataError(f"'{class_root}' has {len(classes)} class folder{which}; a classifier needs at "
                        f"least 2. Add a folder per class.")
    if val_found is not None:
        extra = sorted(set(val_found) - set(train_found))
        if extra:
            raise DataError(f"validation classes not in train: {', '.join(extra)} (in '{val_dir}'). "
                            f"Add them to '{train_dir}' or remove them from '{val_dir}'.")
        missing = sorted(set(train_found) - set(val_found))
        if missing:
            scan_warnings.append(f"classes with no validation images: {', '.join(missing)}")

    ignored = [b for _, others in [*train_found.values(), *(val_found or {}).values()] for b in others]
    all_images = [p for imgs, _ in [*train_found.values(), *(val_found or {}).values()] for p in imgs]
    bad: list[BadFile] = []
    if verify:
        threads = num_threads or min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            check = checker or (lambda p: check_image(p, min_size))
            reasons = list(pool.map(check, all_images))
        bad = [BadFile(p, r) for p, r in zip(all_images, reasons) if r is not None]
    if bad and len(bad) == len(all_images):
        raise DataError(f"none of the {len(all_images)} images under '{root}' could be read "
                        f"(e.g. {bad[0].path}: {bad[0].reason}). Check the files are images.")
    if bad and not skip_bad_images:
        listed = "; ".join(f"{b.path} ({b.reason})" for b in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(f"{len(bad)} of {len(all_images)} images cannot be used: {listed}{more}. "
                        f"Remove them, or pass --skip-bad-images (they are then listed in skipped.csv).")
    bad_paths = {b.path for b in bad}
    label_of = {c: i for i, c in enumerate(classes)}

    train: list[Sample] = []
    val: list[Sample] = []
    for split_name, found, target in (("train", train_found, train), ("val", val_found or {}, val)):
        for cls, (images, _) in sorted(found.items()):
            good = [p for p in images if p not in bad_paths]
            if not good:
                raise DataError(f"every image in class folder '{images[0].parent}' is unreadable. "
                                f"Replace them or delete the folder.")
            target.extend(Sample(p, label_of[cls]) for p in good)
    if val_found is None:
        train, val = stratified_split(train, classes, val_fraction, seed, class_root)
    for cls, count in DataScan(root, layout, classes, train, val).class_counts("train").items():
        if count < 2:
            scan_warnings.append(f"class '{cls}' has only {count} training image(s); add more")
    if bad:
        scan_warnings.append(f"skipping {len(bad)} unreadable image(s), listed in skipped.csv")
    outputs = list(dict.fromkeys(outputs))  # a class root's folders are listed twice
    if outputs:
        scan_warnings.append(f"ignoring {len(outputs)} folder(s) written by graftkit (runs or subsamples, not "
                             f"classes): {', '.join(str(o) for o in outputs[:3])}{' ...' if len(outputs) > 3 else ''}; "
                             f"keep --out outside DATA_DIR")
    if ignored:
        scan_warnings.append(f"ignoring {len(ignored)} file(s) that are not images by name or cannot be read "
                             f"(e.g. {ignored[0].path})")
    return DataScan(root, layout, classes, train, val, bad, ignored, scan_warnings)


def stratified_split(samples: list[Sample], classes: list[str], val_fraction: float, seed: int,
                      root: Path) -> tuple[list[Sample], list[Sample]]:
    """Per class, order files by a seeded hash and hold out the first ``val_fraction``."""
    train, val = [], []
    for label, cls in enumerate(classes):
        members = sorted((s for s in samples if s.label == label),
                         key=lambda s: _split_key(seed, cls, s.path, root))
        num_val = round(val_fraction * len(members)) if len(members) > 1 else 0
        num_val = min(max(num_val, 1 if len(members) > 1 else 0), len(members) - 1)
        val.extend(members[:num_val])
        train.extend(members[num_val:])
    key = lambda s: (s.label, str(s.path))  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)
