"""``subsample``: a labelled subset of N images per class plus the rest as an unlabelled pile.

For experiments on scarce labels: ``OUT/train/<class>/`` holds N images per class (chosen by a
seeded hash, so the same seed picks the same images anywhere), ``OUT/val/<class>/`` the original
validation split (or the held-out part of a class-folder dataset), ``OUT/unlabeled/`` the rest of
train in one flat folder (no class in its path). Files are symbolic links to the originals; where the
file system refuses links, hard links, then copies, and ``subsample.json`` says which.
``unlabeled_truth.csv`` keeps the true class of each unlabelled file, to score pseudo-labels.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data import DataScan, Sample, scan_data
from ..errors import ConfigError

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


def choose_labelled(scan: DataScan, per_class: int | None, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(labelled, rest) of ``scan.train``: per class the first ``per_class`` by a seeded hash."""
    labelled, rest = [], []
    for label in range(len(scan.classes)):
        members = sorted((s for s in scan.train if s.label == label), key=lambda s: _order_key(seed, s, scan.root))
        cut = len(members) if per_class is None else per_class
        labelled.extend(members[:cut])
        rest.extend(members[cut:])
    return labelled, rest


def _link(source: Path, target: Path, method: str) -> str:
    """Place ``source`` at ``target`` by ``method`` or the next one that works; return the one used."""
    for candidate in LINK_METHODS[LINK_METHODS.index(method):]:
        try:
            if candidate == "symlink":
                os.symlink(source.resolve(), target)
            elif candidate == "hardlink":
                os.link(source.resolve(), target)
            else:
                shutil.copy2(source, target)
            return candidate
        except (OSError, NotImplementedError):
            if candidate == "copy":
                raise
    raise AssertionError("unreachable")


def _flat_name(sample: Sample, root: Path, used: set[str]) -> str:
    """A unique file name for the flat unlabelled folder that does not reveal the class."""
    name = sample.path.name
    if name in used:
        digest = hashlib.blake2b(str(sample.path).encode(), digest_size=4).hexdigest()
        name = f"{sample.path.stem}-{digest}{sample.path.suffix}"
    used.add(name)
    return name


def subsample(data_dir: str | Path, per_class: int | None, out_dir: str | Path, seed: int = 0,
              val_fraction: float = 0.2, scan: DataScan | None = None, split_seed: int = 0) -> Subsample:
    """Write a labelled subset of ``per_class`` images per class and the rest as unlabelled.

    Args:
        data_dir: a dataset graftkit can train on (``train/`` + ``val/``, or class folders).
        per_class: labelled images kept per class (None: all of them).
        out_dir: a new or empty folder.
        seed: which images are picked (the same seed picks the same images).
        val_fraction: held out per class when ``data_dir`` has no ``val/`` (as in training).
        scan: an existing scan of ``data_dir`` (saves listing it again).
        split_seed: seeds that hold-out, as ``graft train --seed`` seeds it (``TrainConfig.resolved_split_seed``).

    Raises:
        ConfigError: ``out_dir`` is not empty, or ``per_class`` < 1.
    """
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class must be >= 1 (or None for all), got {per_class}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"'{out}' is not empty; pass a new --out folder (nothing was overwritten).")
    scan = scan or scan_data(data_dir, val_fraction, seed=split_seed, verify=False)
    labelled, rest = choose_labelled(scan, per_class, seed)
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
    for split, samples in (("train", labelled), ("val", scan.val)):
        for s in samples:
            folder = out / split / scan.classes[s.label]
            folder.mkdir(parents=True, exist_ok=True)
            used = _link(s.path, folder / s.path.name, method)
            methods.add(used)
            method = used  # once links fail they keep failing: skip straight to what works
    unlabeled = out / "unlabeled"
    unlabeled.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    truth = []
    for s in rest:
        name = _flat_name(s, scan.root, used_names)
        used = _link(s.path, unlabeled / name, method)
        methods.add(used)
        method = used
        truth.append((name, scan.classes[s.label]))
    with (out / "unlabeled_truth.csv").open("w", newline="") as f:
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
                       link_method, warnings)
    (out / "subsample.json").write_text(json.dumps({
        "source": str(Path(data_dir).resolve()), "per_class": per_class, "seed": seed,
        "split": {"layout": scan.layout, "val_fraction": val_fraction, "seed": split_seed},
        "classes": scan.classes, "train": result.train_counts, "val": result.val_counts,
        "unlabeled": result.unlabeled_counts, "link_method": link_method, "warnings": warnings}, indent=2))
    return result
