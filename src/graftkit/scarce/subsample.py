"""``subsample``: a labelled subset of N images per class plus the rest as an unlabelled pile.

For experiments on scarce labels: ``OUT/train/<class>/`` holds N images per class (chosen by a
seeded hash, so the same seed picks the same images anywhere), ``OUT/val/<class>/`` the original
validation split (or the held-out part of a class-folder dataset), ``OUT/unlabeled/`` the rest of
train in one flat folder (no class in its path). Files are symbolic links to the originals; where the
file system refuses links, hard links, then copies, and ``subsample.json`` says which.
``unlabeled_truth.csv`` keeps the true class of each unlabelled file, to score pseudo-labels.

``long_tail=RATIO`` keeps a long-tailed training set instead of N per class: the classes in a seeded
order, class of rank r keeps ``n_max * RATIO ** (-r / (C - 1))`` images (``n_max``: the fewest any
class has), so the largest class has RATIO times the images of the smallest (:func:`long_tail_profile`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data import DataScan, Sample, scan_data
from ..errors import ConfigError
from ..fileio import refuse_out_inside_data

LINK_METHODS = ("symlink", "hardlink", "copy")


@dataclass
class Subsample:
    """What ``subsample`` wrote: the folder, counts per class and how files were linked."""

    out_dir: Path
    classes: list[str]
    train_counts: dict[str, int]
    val_counts: dict[str, int]
    unlabeled_counts: dict[str, int]
    link_method: str
    warnings: list[str]
    long_tail: dict | None = None  # {ratio, order, profile} of a long-tailed subset

    @property
    def unlabeled_dir(self) -> Path:
        return self.out_dir / "unlabeled"


def parse_per_class(text: str) -> list[int | None]:
    """``"5,10,25,all"`` → ``[5, 10, 25, None]`` (None: every training image)."""
    sizes: list[int | None] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            sizes.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"--per-class takes whole numbers or 'all', comma-separated; got {part!r}") from None
        if value < 1:
            raise ConfigError(f"--per-class sizes must be >= 1, got {value}")
        sizes.append(value)
    if not sizes:
        raise ConfigError("--per-class needs at least one size, e.g. 5,10,25,all")
    return sizes


def _order_key(seed: int, sample: Sample, root: Path) -> str:
    try:
        rel = sample.path.relative_to(root).as_posix()
    except ValueError:
        rel = sample.path.as_posix()
    return hashlib.sha256(f"subsample:{seed}:{rel}".encode()).hexdigest()


def long_tail_profile(counts: dict[str, int], ratio: float, seed: int) -> dict[str, int]:
    """Training images per class of a long-tailed subset: the classes ranked in a seeded order (a
    hash of seed and name), rank r of C keeps ``round(n_max * ratio ** (-r / (C - 1)))`` (at least 1),
    ``n_max`` the fewest training images any class has. Keys in rank order, largest first."""
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ConfigError(f"--long-tail takes the ratio of the largest class to the smallest, a number >= 1; "
                          f"got {ratio}")
    if len(counts) < 2:
        raise ConfigError(f"--long-tail needs at least 2 classes; the data has {len(counts)}")
    order = sorted(counts, key=lambda c: hashlib.sha256(f"long-tail:{seed}:{c}".encode()).hexdigest())
    n_max, last = min(counts.values()), len(order) - 1
    return {c: max(1, round(n_max * ratio ** (-rank / last))) for rank, c in enumerate(order)}


def choose_labelled(scan: DataScan, per_class: int | None | dict[str, int],
                    seed: int) -> tuple[list[Sample], list[Sample]]:
    """(labelled, rest) of ``scan.train``: per class the first ``per_class`` by a seeded hash
    (a number for every class, None for all, or a number per class name)."""
    labelled, rest = [], []
    for label in range(len(scan.classes)):
        members = sorted((s for s in scan.train if s.label == label), key=lambda s: _order_key(seed, s, scan.root))
        size = per_class.get(scan.classes[label]) if isinstance(per_class, dict) else per_class
        cut = len(members) if size is None else size
        labelled.extend(members[:cut])
        rest.extend(members[cut:])
    return labelled, rest


def _copy_exclusive(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``: never over an existing file, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with open(source, "rb") as src:
        fd = os.open(target, flags, 0o666)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.copystat(source, target, follow_symlinks=False)


def _link(source: Path, target: Path, method: str) -> str:
    """Place ``source`` at the new path ``target`` by ``method`` or the next one that works; return the
    one used. An existing ``target`` is an error, never a reason to try the next method: a copy onto
    a link made a moment ago would write into the original image."""
    for candidate in LINK_METHODS[LINK_METHODS.index(method):]:
        try:
            if candidate == "symlink":
                os.symlink(source.resolve(), target)
            elif candidate == "hardlink":
                os.link(source.resolve(), target)
            else:
                _copy_exclusive(source, target)
            return candidate
        except FileExistsError:
            raise ConfigError(f"'{target}' already exists (another process writing into the same --out?); "
                              f"nothing was written over it. Pass a new --out folder.") from None
        except (OSError, NotImplementedError):
            if candidate == "copy":
                raise
    raise AssertionError("unreachable")


def _unique_name(sample: Sample, root: Path, used: set[str]) -> str:
    """A file name not yet in ``used`` (names taken in one output folder): the original name, or,
    when another image of the folder already has it (``cat/a/0.png`` and ``cat/b/0.png``), the name
    with a short hash of the source path. Flat, so the class is not revealed by sub-folders."""
    name, salt = sample.path.name, 0
    while name.casefold() in used:
        try:
            rel = sample.path.relative_to(root).as_posix()
        except ValueError:
            rel = sample.path.as_posix()
        digest = hashlib.blake2b(f"{rel}:{salt}".encode(), digest_size=4).hexdigest()
        name, salt = f"{sample.path.stem}-{digest}{sample.path.suffix}", salt + 1
    used.add(name.casefold())  # casefold: two names differing only in case collide on macOS/Windows
    return name


def subsample(data_dir: str | Path, per_class: int | None, out_dir: str | Path, seed: int = 0,
              val_fraction: float = 0.2, scan: DataScan | None = None, split_seed: int = 0,
              long_tail: float | None = None) -> Subsample:
    """Write a labelled subset of ``per_class`` images per class and the rest as unlabelled.

    Args:
        data_dir: a dataset graftkit can train on (``train/`` + ``val/``, or class folders).
        per_class: labelled images kept per class (None: all of them).
        out_dir: a new or empty folder.
        seed: which images are picked (the same seed picks the same images).
        val_fraction: held out per class when ``data_dir`` has no ``val/`` (as in training).
        scan: an existing scan of ``data_dir`` (saves listing it again).
        split_seed: seeds that hold-out, as ``graft train --seed`` seeds it (``TrainConfig.resolved_split_seed``).
        long_tail: instead of ``per_class`` (pass None), a long-tailed training set whose largest class
            has this many times the images of the smallest (:func:`long_tail_profile`); val stays whole.

    Raises:
        ConfigError: ``out_dir`` is not empty, ``per_class`` < 1, or ``long_tail`` < 1.
    """
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class must be >= 1 (or None for all), got {per_class}")
    out = Path(out_dir)
    refuse_out_inside_data(out, Path(data_dir))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out '{out}' is a link or a file; pass a new folder (nothing was written).")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"'{out}' is not empty; pass a new --out folder (nothing was overwritten).")
    scan = scan or scan_data(data_dir, val_fraction, seed=split_seed, verify=False)
    tail = None
    if long_tail is not None:
        profile = long_tail_profile(scan.class_counts("train"), long_tail, seed)
        tail = {"ratio": long_tail, "order": list(profile), "profile": profile}
    labelled, rest = choose_labelled(scan, per_class if tail is None else tail["profile"], seed)
    warnings = []
    if per_class is not None:
        counts = {c: 0 for c in scan.classes}
        for s in labelled:
            counts[scan.classes[s.label]] += 1
        short = [f"{c} ({n})" for c, n in counts.items() if n < per_class]
        if short:
            warnings.append(f"fewer than {per_class} training images in: {', '.join(short)}; took them all")
    methods: set[str] = set()
    method = "symlink"
    names_used: dict[Path, set[str]] = {}
    placed: list[tuple[Sample, Path, str]] = []   # (sample, folder, file name)
    for split, samples in (("train", labelled), ("val", scan.val)):
        for s in samples:
            folder = out / split / scan.classes[s.label]
            placed.append((s, folder, _unique_name(s, scan.root, names_used.setdefault(folder, set()))))
    unlabeled = out / "unlabeled"
    truth = []
    for s in rest:
        name = _unique_name(s, scan.root, names_used.setdefault(unlabeled, set()))
        placed.append((s, unlabeled, name))
        truth.append((name, scan.classes[s.label]))
    unlabeled.mkdir(parents=True, exist_ok=True)
    for s, folder, name in placed:
        folder.mkdir(parents=True, exist_ok=True)
        used = _link(s.path, folder / name, method)
        methods.add(used)
        method = used  # once links fail they keep failing: skip straight to what works
    with (out / "unlabeled_truth.csv").open("x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(truth)
    link_method = "+".join(m for m in LINK_METHODS if m in methods) or "symlink"
    if link_method != "symlink":
        warnings.append(f"symbolic links failed here; used {link_method} instead")

    def counts_of(samples: list[Sample]) -> dict[str, int]:
        counts = {c: 0 for c in scan.classes}
        for s in samples:
            counts[scan.classes[s.label]] += 1
        return counts

    result = Subsample(out, scan.classes, counts_of(labelled), counts_of(scan.val), counts_of(rest),
                       link_method, warnings, tail)
    with (out / "subsample.json").open("x") as f:
        f.write(json.dumps({
            "source": str(Path(data_dir).resolve()), "per_class": per_class, "long_tail": tail, "seed": seed,
            "split": {"layout": scan.layout, "val_fraction": val_fraction, "seed": split_seed},
            "classes": scan.classes, "train": result.train_counts, "val": result.val_counts,
            "unlabeled": result.unlabeled_counts, "link_method": link_method, "warnings": warnings}, indent=2))
    return result
