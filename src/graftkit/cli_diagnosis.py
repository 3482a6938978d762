"""``graft check-data --label-issues`` and the diagnosis printed at the end of ``graft train``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .config import TrainConfig
from .errors import ConfigError, GraftError

LABEL_ISSUE_OPTIONS = ("top", "out", "backbone", "device", "cache_dir")


def print_run_diagnosis(out_dir: Path) -> None:
    """A few lines: what the run's files say to fix (the same findings as report.html's panel)."""
    from .report.diagnosis import diagnose, diagnosis_lines
    from .report.runfiles import load_run

    for line in diagnosis_lines(diagnose(load_run(out_dir))):
        typer.echo(line)
    typer.echo(f"report with the diagnosis, curves and images: graft report {out_dir}")


def refuse_options_without_label_issues(ctx: typer.Context) -> None:
    given = [name for name in LABEL_ISSUE_OPTIONS
             if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")]
    if given:
        shown = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise GraftError(f"{shown} only apply with --label-issues: add --label-issues, or drop them.")


def check_label_issues(data_dir: Path, val_fraction: float, seed: int, skip_bad_images: bool, top: Optional[int],
                       out: Optional[Path], backbone: str, device: str, cache_dir: Optional[Path]) -> None:
    """Rank the likely mislabelled images of DATA_DIR, write OUT/label_issues.csv, print the top ones."""
    from datetime import datetime

    from .engine.label_issues import cleanlab_missing, find_label_issues, summary_line, write_label_issues
    from .engine.progress import ProgressReporter
    from .fileio import refuse_out_inside_data, refuse_used_folder

    hint = cleanlab_missing()
    if hint:
        raise ConfigError(hint)
    top = 20 if top is None else top
    if top < 0:
        raise ConfigError(f"--top must be >= 0, got {top}")
    folder = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-label-issues"
    refuse_out_inside_data(folder, data_dir)
    refuse_used_folder(folder, "check-data --label-issues")  # before minutes of feature extraction
    cfg = TrainConfig(data_dir=data_dir, backbone=backbone, val_fraction=val_fraction, seed=seed,
                      skip_bad_images=skip_bad_images, device=device, cache_dir=cache_dir)
    report = ProgressReporter("auto")
    try:
        result = find_label_issues(cfg, report=report)
    finally:
        report.close()
    path = write_label_issues(folder, result)
    shown = result.issues[:top]
    if shown:
        typer.echo(f"likely label errors, most suspicious first ({len(shown)} of {len(result.issues)}):")
        typer.echo(f"{'rank':>5} {'quality':>8}  {'split':<5}  given → suggested  path")
    for issue in shown:
        typer.echo(f"{issue.rank:>5} {issue.label_quality:>8.4f}  {issue.split:<5}  {issue.given_label} → "
                   f"{issue.suggested_label}  {issue.path}")
    typer.echo(summary_line(result, path))
