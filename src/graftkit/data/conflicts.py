"""Identical images (the same bytes) under two different classes: a label conflict.

Found from the content keys training already computes (the decoded-image cache's), listed in the
run folder's ``label_conflicts.csv`` with a warning, and printed by ``graft check-data``.
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

from .scan import Sample


def find_label_conflicts(samples: Sequence[Sample], keys: Sequence[str]) -> list[list[Sample]]:
    """Groups of samples whose bytes are identical (same key) but whose labels differ."""
    groups: dict[str, list[Sample]] = {}
    for sample, key in zip(samples, keys):
        groups.setdefault(key, []).append(sample)
    return [group for group in groups.values() if len({s.label for s in group}) > 1]


def label_conflicts_csv(groups: list[list[Sample]], classes: list[str]) -> str:
    """``group,class,path`` rows (csv quoting: any file name survives)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "class", "path"])
    for number, group in enumerate(groups, 1):
        for sample in group:
            writer.writerow([number, classes[sample.label], str(sample.path)])
    return buffer.getvalue()


def label_conflicts_warning(groups: list[list[Sample]], classes: list[str],
                            listed: str = "label_conflicts.csv") -> str:
    example = " = ".join(f"{s.path} ({classes[s.label]})" for s in groups[0][:2])
    return (f"{len(groups)} image(s) appear under more than one class (same bytes), e.g. {example}: a label "
            f"conflict. Listed in {listed}; keep each image in one class.")
