"""Reports from run files alone: ``graft report RUN_DIR`` and the ``graft compare`` report.

Reads ``history.jsonl``, ``metrics.json``, ``config.json``, ``predictions.csv``, ``skipped.csv``
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
        refresh_compare_json(path)
        return render_compare_report(path, out, worst=worst, gradcam=gradcam)
    return render_run_report(path, out, worst=worst, gradcam=gradcam)  # raises with what is missing


def refresh_compare_json(compare_dir: str | Path) -> dict:
    """Recompute the summary in ``compare.json`` from the run folders (what the comparison itself
    recorded, such as seeds and budget, is kept)."""
    import json

    from ..fileio import atomic_write_text

    path = Path(compare_dir) / "compare.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    updated = {**saved, **summarize_comparison(find_compare_runs(compare_dir))}
    atomic_write_text(path, json.dumps(updated, indent=2))
    return updated


__all__ = ["refresh_compare_json", "RunFiles", "find_compare_runs", "is_compare_dir", "is_run_dir", "load_run", "summarize_comparison",
           "write_report"]
