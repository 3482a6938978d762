"""``graft sweep``: registered on the app of ``cli.py`` (the work is in :mod:`graftkit.workflows.sweep`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import GraftError


class SweepInterrupted(GraftError):
    exit_code = 130


def sweep_command(
    data_dir: Annotated[Path, typer.Argument(help="Image folder (class folders, or train/ + val/).")],
    trials: int = typer.Option(20, help="Trials in the study (finished or pruned), counting earlier runs of it."),
    space: Optional[Path] = typer.Option(None, help="YAML file changing the search space (docs/sweep.md)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by every process working on the "
                                          "study (default: sqlite:///OUT/sweep.db; PostgreSQL across machines)."),
    study: Optional[str] = typer.Option(None, help="Study name in the storage (default: the --out folder's name)."),
    time_limit: str = typer.Option("20m", help="Wall-clock budget of the whole sweep, trials and the retrain of "
                                   "the best: 90s, 25m, 1h30m, or none. Trials stop early enough for the retrain."),
    out: Optional[Path] = typer.Option(None, help="Sweep folder (default: sweeps/<DATA_DIR name>)."),
    seed: int = typer.Option(0, help="Seeds the inner split, the sampler and every trial."),
    pruner: str = typer.Option("median", help="median | halving (successive halving) | none."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Search training settings with Optuna on an inner split of train; retrain the best, score it on val once."""
    from .config import parse_duration
    from .engine.fit import Interrupted
    from .workflows.sweep import SweepSettings, require_optuna, sweep

    limit = None if time_limit.strip().lower() == "none" else parse_duration(time_limit)
    settings = SweepSettings(data_dir, out or Path("sweeps") / data_dir.resolve().name, trials, space, storage,
                             study, limit, seed, pruner,
                             base={"device": device, "progress": "none"})
    try:
        # graft's own process: one line per trial is ours; Optuna's per-trial log (with the traceback
        # of a trial stopped by Ctrl-C) would only repeat it
        optuna = require_optuna()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        summary = sweep(settings, say=lambda line: typer.echo(line))
    except (KeyboardInterrupt, Interrupted):
        raise SweepInterrupted(f"interrupted; finished trials are kept in {settings.storage_url}. Run the same "
                               f"command again to continue the study.") from None
    print_trials(summary)
    typer.echo(f"val_accuracy {summary['val_accuracy']:.4f} of the best settings retrained on all of train "
               f"(trial {summary['best_trial']}, inner {summary['best_inner_val_accuracy']:.4f})")
    typer.echo(f"best command: {summary['best_command']}")
    typer.echo(f"sweep folder: {settings.out_dir} (sweep.json, sweep.html, history.png, importance.png)")


def print_trials(summary: dict[str, Any]) -> None:
    """The trials, best first: number, state, inner accuracy, epochs run, settings."""
    from rich.console import Console
    from rich.table import Table

    table = Table("trial", "state", "inner val_acc", "epochs", "seconds", "settings", title=f"study {summary['study']}")
    ranked = sorted(summary["trials"], key=lambda t: (t["value"] is None, -(t["value"] or 0.0)))
    for t in ranked:
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        table.add_row(f"{t['number']}{' default' if t['default'] else ''}", t["state"],
                      "" if t["value"] is None else f"{t['value']:.4f}", str(t["epochs_reported"]),
                      "" if t["seconds"] is None else f"{t['seconds']:.0f}", params)
    Console(width=160).print(table)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
