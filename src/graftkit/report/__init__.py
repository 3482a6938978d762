"""Reports from run files alone: ``graft report RUN_DIR`` and the ``graft compare`` report.

Reads ``history.jsonl``, ``metrics.json``, ``config.json``, ``predictions.csv``, ``skipped.txt``
(and the model files, for Grad-CAM); never retrains and never imports the training engine.
"""
from __future__ import annotations

from pathlib import Path

from .runfiles import RunFiles, find_compare_runs, is_compare_dir, is_run_dir, load_run
from .summary import summarize_comparison


def write_report(path: str | Path, out: str | Path | None = None, worst: int = 12, gradcam: int = 4) -> Path:
    """Write ``report.html`` for a run folder or a ``graft compare`` folder; returns its path."""
    from ..errors import ConfigError
    from .html import render_compare_report, render_run_report

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"'{path}' is not a folder. Pass a run folder (from 'graft train') or a "
                          f"comparison folder (from 'graft compare').")
    if is_run_dir(path):
        return render_run_report(path, out, worst=worst, gradcam=gradcam)
    if is_compare_dir(path):
        return render_compare_report(path, out, worst=worst, gradcam=gradcam)
    return render_run_report(path, out, worst=worst, gradcam=gradcam)  # raises with what is missing


__all__ = ["RunFiles", "find_compare_runs", "is_compare_dir", "is_run_dir", "load_run", "summarize_comparison",
           "write_report"]
