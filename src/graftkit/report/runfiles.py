"""Read a run folder, and a comparison folder, from its files alone (nothing is retrained)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runfiles_schema import (COMPARE_SCHEMA, FREEZE_AUTO_SCHEMA, PLAN_SCHEMA, HISTORY_SCHEMA, LABEL_ISSUE_COLUMNS,
                               LR_FIND_SCHEMA, METRICS_SCHEMA, Schema, check_report_file, parse_prediction_row)


@dataclass
class RunFiles:
    """What a finished run folder holds, as plain Python values.

    ``predictions`` rows have ``path``, ``label``, ``predicted``, ``confidence`` and
    ``true_class_probability`` (the last two as floats).
    """

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    label_conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (group, class, path)
    label_issues: list[dict[str, str]] = field(default_factory=list)  # label_issues.csv rows, rank order
    freeze_auto: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None  # plan.json (--time-limit, --backbone auto)
    lr_find: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.metrics.get("classes") or self.config.get("classes") or [])

    @property
    def strategy(self) -> str:
        return str(self.metrics.get("strategy") or self.config.get("strategy", "?"))

    @property
    def has_model(self) -> bool:
        return (self.run_dir / "model.safetensors").is_file() and (self.run_dir / "model.json").is_file()

    def class_counts(self, split: str) -> dict[str, int] | None:
        """Images per class in ``split`` (``train`` or ``val``); val falls back to predictions.csv."""
        counts = (self.metrics.get("class_counts") or {}).get(split)
        if counts is not None:
            return {str(k): int(v) for k, v in counts.items()}
        if split == "val" and self.predictions:
            out = {c: 0 for c in self.classes}
            for row in self.predictions:
                out[row["label"]] = out.get(row["label"], 0) + 1
            return out
        return None


def _read_json(path: Path, schema: Schema | None = None) -> Any:
    """The JSON in ``path`` (None when it does not exist), checked against ``schema`` when given."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read '{path}' ({exc}); restore it from the run or retrain.") from None
    return data if schema is None else check_report_file(data, schema, path)


def _read_history(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read '{path}' ({exc}); restore it from the run or retrain.") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"'{path}' (line {number}) is not JSON ({exc}); restore it from the run "
                              f"or retrain.") from None
        rows.append(check_report_file(row, HISTORY_SCHEMA, path, f"line {number}"))
    return rows


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as f:
            return [parse_prediction_row(row, path, number)
                    for number, row in enumerate(csv.DictReader(f), 2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read '{path}' ({exc}); restore it from the run or retrain.") from None


def _read_csv(path: Path, header: list[str]) -> list[list[str]]:
    """The rows of a csv file graftkit wrote with ``header``; [] when it is absent."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if rows[:1] != [header] or any(len(row) != len(header) for row in rows[1:]):
            raise ValueError(f"expected the columns {','.join(header)}")
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise ConfigError(f"cannot read '{path}' ({exc}); restore it from the run or retrain.") from None
    return rows[1:]


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "metrics.json").is_file()


def load_run(run_dir: str | Path) -> RunFiles:
    """Read a finished run folder written by ``graft train`` (or ``graft compare``)."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json", METRICS_SCHEMA)
    if metrics is None:
        hint = (" It holds a checkpoint: finish it with 'graft train --resume " f"{run_dir}'."
                if (run_dir / "checkpoint.pt").exists() else "")
        raise ConfigError(f"'{run_dir}' is not a finished run folder (no metrics.json).{hint} "
                          f"Pass a folder written by 'graft train' or 'graft compare'.")
    history_path = run_dir / "history.jsonl"
    history = _read_history(history_path) if history_path.is_file() else []
    predictions_path = run_dir / "predictions.csv"
    predictions = _read_predictions(predictions_path) if predictions_path.is_file() else []
    skipped = [(row[0], row[1]) for row in _read_csv(run_dir / "skipped.csv", ["path", "reason"])]
    if not skipped and (run_dir / "skipped.txt").is_file():  # written by graftkit before skipped.csv
        for line in (run_dir / "skipped.txt").read_text().splitlines():
            if line.strip():
                path, _, reason = line.partition("\t")
                skipped.append((path, reason))
    label_conflicts = [(g, c, p) for g, c, p in _read_csv(run_dir / "label_conflicts.csv", ["group", "class", "path"])]
    label_issues = [dict(zip(LABEL_ISSUE_COLUMNS, row))
                    for row in _read_csv(run_dir / "label_issues.csv", list(LABEL_ISSUE_COLUMNS))]
    duplicates = []
    if (run_dir / "duplicates.txt").is_file():
        duplicates = [line for line in (run_dir / "duplicates.txt").read_text().splitlines() if line.strip()]
    return RunFiles(run_dir=run_dir, config=_read_json(run_dir / "config.json", {}) or {}, metrics=metrics,
                    history=history, predictions=predictions, skipped=skipped, duplicates=duplicates,
                    label_conflicts=label_conflicts, label_issues=label_issues,
                    freeze_auto=_read_json(run_dir / "freeze_auto.json", FREEZE_AUTO_SCHEMA),
                    plan=_read_json(run_dir / "plan.json", PLAN_SCHEMA),
                    lr_find=_read_json(run_dir / "lr_find.json", LR_FIND_SCHEMA),
                    resources=_read_json(run_dir / "resources.json"))


def find_compare_runs(compare_dir: str | Path) -> dict[str, list[RunFiles]]:
    """``{strategy: [runs, by seed]}`` for the ``<strategy>/seed<k>/`` folders of a comparison.

    The order of strategies is the one in ``compare.json`` when it exists, else alphabetical.
    """
    compare_dir = Path(compare_dir)
    saved = _read_json(compare_dir / "compare.json", COMPARE_SCHEMA) or {}
    names = list(saved.get("strategies", {})) or sorted(p.name for p in compare_dir.iterdir() if p.is_dir())
    out: dict[str, list[RunFiles]] = {}
    for name in names:
        folder = compare_dir / name
        seeds = sorted((p for p in folder.glob("seed*") if is_run_dir(p)),
                       key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)
        if seeds:
            out[name] = [load_run(p) for p in seeds]
    if not out:
        raise ConfigError(f"'{compare_dir}' holds no finished runs in <strategy>/seed<k>/ folders. "
                          f"Pass a folder written by 'graft compare'.")
    return out


def is_compare_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "compare.json").is_file() or (
        path.is_dir() and not is_run_dir(path) and any(is_run_dir(p) for p in path.glob("*/seed*")))
