"""An explicit split: a CSV of ``path,split`` rows (``train`` or ``val``) over a scanned data folder.

``graft sweep`` writes one (its inner split, carved from train) and trains its trials on it
(``TrainConfig.split_file``), so the trials never see the validation images the sweep reports.
Paths are relative to the data folder (as ``/``-separated text); images of the folder the file does
not list take no part. Labels still come from the class folders.
"""
from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_write_text
from .scan import DataScan, Sample

SPLITS = ("train", "val")


def split_file_text(root: Path, train: list[Sample], val: list[Sample]) -> str:
    """The CSV text listing ``train`` and ``val`` (paths relative to ``root``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "split"])
    for split, samples in zip(SPLITS, (train, val)):
        writer.writerows([s.path.relative_to(root).as_posix(), split] for s in samples)
    return buffer.getvalue()


def write_split_file(path: Path, root: Path, train: list[Sample], val: list[Sample]) -> None:
    atomic_write_text(path, split_file_text(root, train, val))


def read_split_file(path: Path) -> dict[str, str]:
    """``{relative path: split}``; a one-line DataError names the file and the bad row."""
    try:
        rows = list(csv.reader(io.StringIO(Path(path).read_text())))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split file '{path}' ({exc}).") from None
    if not rows or rows[0] != ["path", "split"]:
        raise DataError(f"split file '{path}' must start with the header 'path,split'.")
    splits = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in SPLITS:
            raise DataError(f"split file '{path}', line {number}: expected 'PATH,train' or 'PATH,val', got {row!r}.")
        splits[row[0]] = row[1]
    return splits


def apply_split_file(scan: DataScan, path: Path) -> DataScan:
    """``scan`` with train and val as ``path`` lists them (every listed image must be in the scan)."""
    splits = read_split_file(path)
    samples = {s.path.relative_to(scan.root).as_posix(): s for s in [*scan.train, *scan.val]}
    unknown = [p for p in splits if p not in samples]
    if unknown:
        raise DataError(f"split file '{path}' lists {len(unknown)} image(s) not found under '{scan.root}' "
                        f"(e.g. {unknown[0]}); it was written for another data folder.")
    chosen = {split: [samples[p] for p, s in splits.items() if s == split] for split in SPLITS}
    if not chosen["train"] or not chosen["val"]:
        raise DataError(f"split file '{path}' needs both train and val rows.")
    key = lambda s: (s.label, str(s.path))  # noqa: E731
    return replace(scan, train=sorted(chosen["train"], key=key), val=sorted(chosen["val"], key=key),
                   warnings=[*scan.warnings, f"train/val as listed in '{path}'"])
