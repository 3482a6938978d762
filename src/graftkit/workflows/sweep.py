"""``graft sweep``: an Optuna study over training settings that never sees the validation split it reports.

Trials train on an inner split carved from train (seeded, stratified per class, written to
``inner_split.csv`` in the sweep folder) and are scored on its held-out part; each epoch's inner
accuracy goes to a pruner, which stops unpromising trials early. Only the best settings are then
trained again on all of train and scored on the real validation split, once, by the same
``fit`` that ``graft train`` runs; the exact ``graft train`` command is recorded.

The study lives in Optuna storage (default ``sqlite:///<sweep folder>/sweep.db``): the same command
run again continues it, and several processes (or machines, on PostgreSQL) can work on it at once.
"""
from __future__ import annotations

import json
import shlex
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig, unused_options
from ..data.scan import DataScan, stratified_split
from ..data.split_file import write_split_file
from ..engine import fit
from ..engine.prepare import scan_for
from ..engine.tracking import Tracker
from ..errors import ConfigError
from ..fileio import atomic_write_text, refuse_out_inside_data
from ..metrics import binomial_se
from .sweep_space import default_params, load_space, suggest

PRUNERS = ("median", "halving", "none")
INNER_SPLIT = "inner_split.csv"
FINISHED = ("COMPLETE", "PRUNED")
DEFAULT_TIME_LIMIT = 20 * 60.0  # a default study of 20 trials ends in time on a 2-core laptop (docs/sweep.md)
FIRST_TRIAL_SHARE = 0.45  # before a trial has finished, the retrain's reserve is a guess: the rest of the budget


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError('graft sweep needs Optuna: pip install "graftkit[sweep]"') from None
    return optuna


@dataclass
class SweepSettings:
    """What one ``graft sweep`` command asks for (``base``: the settings every trial starts from)."""

    data_dir: Path
    out_dir: Path
    trials: int = 20
    space_file: Path | None = None
    storage: str | None = None      # None: sqlite:///<out_dir>/sweep.db
    study: str | None = None        # None: the sweep folder's name
    time_limit: float | None = DEFAULT_TIME_LIMIT  # seconds for the whole command: trials and the retrain of the best
    seed: int = 0
    pruner: str = "median"
    base: dict[str, Any] | None = None  # TrainConfig values under every trial (device, cache_dir, ...)

    def __post_init__(self) -> None:
        self.data_dir, self.out_dir = Path(self.data_dir), Path(self.out_dir)
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {self.pruner!r}")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'sweep.db').resolve()}"

    @property
    def study_name(self) -> str:
        return self.study or self.out_dir.resolve().name


class PruningReporter(Tracker):
    """An epoch observer for ``fit``: reports each epoch's inner-split accuracy to the trial and stops
    the run (``optuna.TrialPruned``) when the pruner says so."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.trial.report(row["val_accuracy"], step=row["epoch"])
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (inner val_accuracy "
                                     f"{row['val_accuracy']:.4f})")


def inner_split(scan: DataScan, val_fraction: float, seed: int) -> DataScan:
    """The trials' data: train split again (seeded, stratified per class); the real val is left out."""
    train, val = stratified_split(scan.train, scan.classes, val_fraction, seed, scan.root)
    return DataScan(scan.root, scan.layout, scan.classes, train, val, scan.bad, scan.ignored, list(scan.warnings))


def _make_pruner(optuna, name: str):
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    # Not before 4 trials have finished, nor in a trial's first 2 epochs: a fine-tune's early epochs
    # are head epochs and a longer schedule starts slower, so epoch 1 says little (with 2 and 0, a
    # flowers sweep pruned 18 of 20 trials after one epoch and kept the default).
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)


def open_study(settings: SweepSettings, pruner=None):
    """The study in its storage (created, or loaded to go on with it), seeded TPE, maximising accuracy."""
    optuna = require_optuna()
    url = settings.storage_url
    storage = url
    if url.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql"):
        with warnings.catch_warnings():  # heartbeats: a killed process's trial is marked failed, not running forever
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    return optuna.create_study(study_name=settings.study_name, storage=storage, load_if_exists=True,
                               direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed),
                               pruner=pruner or _make_pruner(optuna, settings.pruner))


def finished(study) -> list:
    return [t for t in study.trials if t.state.name in FINISHED]


def _prepare(settings: SweepSettings) -> tuple[dict[str, Any], TrainConfig, DataScan, DataScan]:
    """The space, the settings under every trial, the scan and the inner split (written to the sweep folder)."""
    refuse_out_inside_data(settings.out_dir, settings.data_dir)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(settings.space_file)
    base = TrainConfig(data_dir=settings.data_dir, seed=settings.seed, **{**(settings.base or {}), **_fixed(space)})
    base.replace(**default_params(space, base))  # a bad value fails here, before any trial
    scan = scan_for(base)  # validated once, every image decoded into the cache
    inner = inner_split(scan, base.val_fraction, settings.seed)
    write_split_file(settings.out_dir / INNER_SPLIT, scan.root, inner.train, inner.val)
    return space, base, scan, inner


def sweep(settings: SweepSettings, say: Callable[[str], None] = print, pruner=None) -> dict[str, Any]:
    """Run (or continue) the study, retrain the best settings on all of train, write the sweep folder.
    Returns what ``sweep.json`` holds."""
    optuna = require_optuna()
    out = settings.out_dir
    space, base, scan, inner = _prepare(settings)
    study = open_study(settings, pruner)
    done = len(finished(study))
    if study.trials:  # another process, or an earlier run of this command: go on with different draws
        study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials))
        say(f"resuming study {settings.study_name}: {done} of {settings.trials} trials done")
    study.enqueue_trial(default_params(space, base), user_attrs={"default": True}, skip_if_exists=True)
    deadline = None if settings.time_limit is None else time.monotonic() + settings.time_limit
    budget = Budget(deadline, len(scan.train) / max(len(inner.train), 1))

    def objective(trial) -> float:
        params = suggest(trial, space)
        cfg = base.replace(**params, out_dir=out / "trials" / f"trial-{trial.number:03d}",
                           split_file=(out / INNER_SPLIT).resolve(), max_seconds=budget.for_trial(study))
        say(f"trial {trial.number}: " + " ".join(f"{k}={_show(v)}" for k, v in params.items()))
        run = fit(cfg, inner, observers=[PruningReporter(trial)])
        trial.set_user_attr("val_loss", run.metrics["val_loss"])
        trial.set_user_attr("seconds", run.metrics["seconds_total"])
        trial.set_user_attr("epochs_asked", cfg.total_epochs)
        return run.metrics["val_accuracy"]

    def stop_in_time(study, trial) -> None:
        say(_trial_line(trial))
        if budget.trials_over(study):
            study.stop()
            say(f"time limit: {len(finished(study))} of {settings.trials} trials done; the rest of the "
                f"{settings.time_limit / 60:.0f} min is kept for the retrain of the best (run the same command "
                f"again to add trials)")

    if done < settings.trials and not budget.trials_over(study):
        stop = optuna.study.MaxTrialsCallback(settings.trials, states=tuple(
            getattr(optuna.trial.TrialState, s) for s in FINISHED))
        study.optimize(objective, n_trials=settings.trials - done, callbacks=[stop, stop_in_time], catch=())
    return finish(settings, study, base, space, scan, say, budget, len(inner.val))


@dataclass
class Budget:
    """One wall-clock deadline for the whole sweep: trials stop early enough that the retrain of the
    best fits before it. The retrain is estimated from the best trial's measured seconds, scaled to
    the epochs it asked for and to all of train (``scale``: train images over inner-train images)."""

    deadline: float | None
    scale: float
    margin: float = 1.15

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def reserve(self, study) -> float:
        """Seconds kept for retraining the best trial so far (a share of what is left before any finished)."""
        best = _best_complete(study)
        if best is None or "seconds" not in best.user_attrs:
            return self.left() * (1 - FIRST_TRIAL_SHARE)
        epochs_run = max(len(best.intermediate_values), 1)
        per_run = best.user_attrs["seconds"] * max(best.user_attrs.get("epochs_asked", epochs_run) / epochs_run, 1.0)
        return per_run * self.scale * self.margin + 15.0

    def for_trial(self, study) -> float | None:
        """``max_seconds`` of the next trial: what is left after the retrain's reserve."""
        return None if self.deadline is None else max(self.left() - self.reserve(study), 1.0)

    def trials_over(self, study) -> bool:
        """No time for another trial (30 s at least) before the retrain's reserve."""
        return self.deadline is not None and self.left() - self.reserve(study) < 30.0

    def for_retrain(self) -> float | None:
        return None if self.deadline is None else max(self.left() - 10.0, 1.0)


def _best_complete(study):
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: t.value) if complete else None


def _trial_line(t) -> str:
    """What one trial ended with, e.g. "trial 3: PRUNED after 2 epoch(s), inner val_accuracy 0.5000"."""
    last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
    value = t.value if t.value is not None else last
    return (f"trial {t.number}: {t.state.name} after {len(t.intermediate_values)} epoch(s)"
            + ("" if value is None else f", inner val_accuracy {value:.4f}"))


def _fixed(space: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in space.items() if not isinstance(v, (list, dict))}


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_settings(trial, space: dict[str, Any]) -> dict[str, Any]:
    return {**_fixed(space), **trial.params}


def chosen_trial(study, num_inner_val: int) -> tuple[Any, str]:
    """The trial whose settings are retrained: the best finished one, unless the default settings are
    within one standard error of it (binomial, on the inner split's images). The best of many noisy
    trials is flattered by the noise that made it best, so a sweep must beat the default by more."""
    best = _best_complete(study)
    default = next((t for t in study.trials if t.user_attrs.get("default") and t.state.name == "COMPLETE"), None)
    se = binomial_se(best.value, num_inner_val)
    if default is None or default.number == best.number:
        return best, f"trial {best.number} has the best inner accuracy"
    if best.value - default.value <= se:
        return default, (f"kept the default settings: the best trial ({best.number}, inner {best.value:.4f}) is "
                         f"within one standard error ({se:.4f}, {num_inner_val} images) of the default's "
                         f"{default.value:.4f}")
    return best, (f"trial {best.number} beats the default's inner {default.value:.4f} by more than one "
                  f"standard error ({se:.4f}, {num_inner_val} images)")


def train_command(base: TrainConfig, settings: dict[str, Any], out_dir: Path) -> str:
    """The ``graft train`` command line that trains ``base`` changed by ``settings`` (TrainConfig field
    names). Settings that change nothing in that run (``--augment`` of a feature extraction on cached
    features) are left out, as ``graft train`` refuses them."""
    cfg = base.replace(**settings)
    args = ["graft", "train", str(base.data_dir)]
    for key, value in settings.items():
        if unused_options(cfg, {key}):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):  # the flag that turns the default over, when it is
            args += [] if value == getattr(TrainConfig, key) else [flag if value else "--no-" + key.replace("_", "-")]
        else:
            args += [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return shlex.join([*args, "--seed", str(base.seed), "--out", str(out_dir)])


def finish(settings: SweepSettings, study, base: TrainConfig, space: dict[str, Any], scan: DataScan,
           say: Callable[[str], None], budget: Budget, num_inner_val: int) -> dict[str, Any]:
    """Retrain the best on all of train, score it on val once; table, plots, ``sweep.json``, ``sweep.html``."""
    out = settings.out_dir
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise ConfigError(f"no trial of study '{settings.study_name}' finished (all pruned or failed); "
                          f"raise --time-limit or --trials, or use --pruner none.")
    best, why = chosen_trial(study, num_inner_val)
    chosen = best_settings(best, space)
    best_dir = out / f"best-trial-{best.number:03d}"
    given = {k: v for k, v in (settings.base or {}).items() if k != "progress"}  # e.g. --device
    command = train_command(base, {**given, **chosen}, best_dir)
    say(f"chosen: trial {best.number} (inner val_accuracy {best.value:.4f}); {why}; retraining on all of train:\n"
        f"  {command}")
    metrics_file = best_dir / "metrics.json"
    if metrics_file.is_file():  # retrained by an earlier run of this command
        metrics = json.loads(metrics_file.read_text())
    else:
        metrics = fit(base.replace(**chosen, out_dir=best_dir, max_seconds=budget.for_retrain()), scan).metrics
    summary = {
        "study": settings.study_name, "storage": _safe_url(settings.storage_url), "trials_asked": settings.trials,
        "states": {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "inner_split": INNER_SPLIT, "best_trial": best.number, "best_inner_val_accuracy": best.value,
        "choice": why, "top_trial": _best_complete(study).number,
        "best_settings": chosen, "best_command": command, "best_run": str(best_dir),
        "val_accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"],
        "default_trial": next((t.number for t in study.trials if t.user_attrs.get("default")), None),
        "trials": [trial_row(t) for t in study.trials],
    }
    summary["plots"] = write_plots(study, out)
    atomic_write_text(out / "sweep.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "sweep.html", sweep_html(summary))
    return summary


def _safe_url(url: str) -> str:
    """A storage URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def trial_row(t) -> dict[str, Any]:
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "epochs_reported": len(t.intermediate_values), "seconds": seconds,
            "default": bool(t.user_attrs.get("default"))}


def write_plots(study, out: Path) -> dict[str, str]:
    """``history.png`` (optimisation history) and ``importance.png`` (needs 2 finished trials whose
    settings differ); a plot that cannot be drawn is named with why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {}
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    for name, draw in (("history.png", vis.plot_optimization_history), ("importance.png", vis.plot_param_importances)):
        if name == "importance.png" and complete < 2:
            plots[name] = f"not drawn: parameter importance needs 2 finished trials, the study has {complete}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
            ax.figure.set_size_inches(7, 4)
            ax.figure.tight_layout()
            ax.figure.savefig(out / name, dpi=100)
            plt.close(ax.figure)
            plots[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            plots[name] = f"not drawn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return plots


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def sweep_html(summary: dict[str, Any]) -> str:
    """A small page: the result, the command of the best, the trials and the plots."""
    from html import escape

    rows = "".join(
        f"<tr><td>{t['number']}{' (default)' if t['default'] else ''}</td><td>{t['state']}</td>"
        f"<td>{_score(t['value'])}</td><td>{t['epochs_reported']}</td>"
        f"<td>{escape(json.dumps(t['params']))}</td></tr>" for t in summary["trials"])
    plots = "".join(f'<img src="{n}" alt="{n}">' if v == "written" else f"<p>{n}: {escape(v)}</p>"
                    for n, v in summary["plots"].items())
    return (f"<!doctype html><meta charset=utf-8><title>sweep {escape(summary['study'])}</title>"
            f"<h1>Sweep {escape(summary['study'])}</h1>"
            f"<p>Best: trial {summary['best_trial']}, inner val_accuracy {summary['best_inner_val_accuracy']:.4f}; "
            f"retrained on all of train: <b>val_accuracy {summary['val_accuracy']:.4f}</b> (scored once).</p>"
            f"<p>{escape(summary.get('choice', ''))}</p><pre>{escape(summary['best_command'])}</pre>"
            f"<table border=1 cellpadding=4><tr><th>trial</th><th>state</th><th>inner val_accuracy</th>"
            f"<th>epochs</th><th>settings</th></tr>{rows}</table>{plots}")
