"""Experiment tracking (``--track mlflow|tensorboard``): an observer that only reads results.

``fit`` hands a tracker each epoch's row and, at the end, the final metrics; the tracker records
them with the run's config and files. It never changes training, runs on rank 0 only, and costs
nothing when off: MLflow and TensorBoard are imported only when asked for (optional extras
``graftkit[mlflow]``, ``graftkit[tensorboard]``, both: ``graftkit[track]``).

Where the records go (``--track-uri`` overrides it):
    mlflow: ``sqlite:///<folder of the run folder>/mlflow.db`` (artifacts beside it in
        ``mlartifacts/``), one experiment per data folder: every run under ``runs/`` lands in one
        store, so ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` compares them all.
        (MLflow 3 refuses its old ``./mlruns`` file store; SQLite is its local default now.)
    tensorboard: ``<run folder>/tensorboard/``, so ``tensorboard --logdir runs`` shows every run
        under its folder's name (``--track-uri DIR``: ``DIR/<run folder name>/``).

A resumed run (``--resume``) goes on recording into the same MLflow run (its id is kept in
``tracking.json`` in the run folder) or the same TensorBoard folder.
"""
from __future__ import annotations

import importlib.util
import json
import numbers
import time
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..fileio import atomic_write_text

# --track KIND → (the modules it imports, the extra that installs them); mlflow's SQLite store needs
# sqlalchemy and alembic (its schema migrations), which mlflow-skinny does not install.
EXTRAS = {"mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"), "tensorboard": (("tensorboard",), "tensorboard")}
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                 "train_images_per_second")
RUN_FILES = ("config.json", "metrics.json", "history.jsonl", "predictions.csv", "model.json",
             "model.safetensors", "augmentations.jpg", "augmentations.png", "skipped.csv", "report.html")
STATE_FILE = "tracking.json"


def require_tracker(kind: str | None) -> None:
    """Fail before any work when ``--track KIND``'s library is not installed (one line, exit 2)."""
    if kind is None:
        return
    modules, extra = EXTRAS[kind]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--track {kind} needs {', '.join(missing)}, which is not installed: pip install "
                          f"\"graftkit[{extra}]\" (or drop --track).")


class Tracker:
    """Does nothing: tracking is off (and on ranks other than 0)."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """One epoch's row of ``history.jsonl`` (``row["epoch"]`` counts from 1)."""

    def on_run_end(self, metrics: dict[str, Any]) -> None:
        """The final ``metrics.json``; the run folder is complete."""

    def close(self, error: BaseException | None = None) -> None:
        """The run stopped early (interrupted, or failed with ``error``)."""


NO_TRACKER = Tracker()


class Observers(Tracker):
    """Several observers as one, called in order (e.g. the tracker, then a sweep's pruning reporter;
    an observer may stop the run by raising, which ``fit`` passes on after closing the others)."""

    def __init__(self, observers: list[Tracker]) -> None:
        self.observers = observers

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.on_epoch_end(row)

    def on_run_end(self, metrics: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.on_run_end(metrics)

    def close(self, error: BaseException | None = None) -> None:
        for observer in self.observers:
            observer.close(error)


def build_tracker(cfg: TrainConfig, out_dir: Path) -> Tracker:
    """The tracker ``cfg.track`` asks for, recording the run in ``out_dir``."""
    if cfg.track == "mlflow":
        return MlflowTracker(cfg, out_dir)
    if cfg.track == "tensorboard":
        return TensorBoardTracker(cfg, out_dir)
    if cfg.track is None:
        return NO_TRACKER
    raise ConfigError(f"--track must be mlflow or tensorboard, got {cfg.track!r}")


def scalar_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The plain numbers among ``values`` (not booleans, not lists)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def run_summary(metrics: dict[str, Any]) -> str:
    """A short Markdown report of the finished run, from its metrics."""
    lines = [f"# {metrics.get('strategy', '')} · {metrics.get('backbone', '')}", "",
             f"val accuracy **{metrics['val_accuracy']:.4f}** (best epoch {metrics.get('best_epoch')}, "
             f"{metrics.get('best_phase')}), val loss {metrics.get('val_loss', float('nan')):.4f}, "
             f"{metrics.get('num_train')} train / {metrics.get('num_val')} val images, "
             f"{metrics.get('seconds_total', 0):.0f} s", "", "| phase | epochs | val accuracy | seconds |",
             "|---|---|---|---|"]
    for phase in metrics.get("phases", []):
        accuracy = phase.get("val_accuracy")
        lines.append(f"| {phase['name']} | {phase['epochs']} | "
                     f"{'-' if accuracy is None else f'{accuracy:.4f}'} | {phase['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _params(cfg: TrainConfig) -> dict[str, str]:
    return {k: str(v) for k, v in cfg.to_dict().items() if k not in ("track", "track_uri", "progress")}


class MlflowTracker(Tracker):
    """Records into an MLflow tracking store through ``MlflowClient`` (no global active run)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.out_dir = out_dir
        root = out_dir.resolve().parent
        uri = cfg.track_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        state = _read_state(out_dir)
        if cfg.resume and state.get("mlflow_run_id"):
            self.run_id = state["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = Path(cfg.data_dir).resolve().name or "graftkit"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=None if cfg.track_uri else (root / "mlartifacts").as_uri())
        run = self.client.create_run(experiment_id, run_name=out_dir.name,
                                     tags={"graftkit.run_dir": str(out_dir.resolve())})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in _params(cfg).items()])
        atomic_write_text(out_dir / STATE_FILE, json.dumps({"mlflow_run_id": self.run_id, "tracking_uri": uri}))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(row[k]), now, row["epoch"]) for k in EPOCH_METRICS if k in row])

    def on_run_end(self, metrics: dict[str, Any]) -> None:
        for key, value in scalar_metrics(metrics).items():
            self.client.log_metric(self.run_id, f"final_{key}", value)
        self.client.log_text(self.run_id, run_summary(metrics), "report.md")
        for name in RUN_FILES:
            if (self.out_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.out_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self, error: BaseException | None = None) -> None:
        self.client.set_terminated(self.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


class TensorBoardTracker(Tracker):
    """Scalars per epoch and the config and report as text, in TensorBoard event files."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(cfg.track_uri) / out_dir.name if cfg.track_uri else out_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir))
        if not cfg.resume:
            self.writer.add_text("config", "```json\n" + cfg.to_json() + "\n```", 0)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for key in EPOCH_METRICS:
            if key in row:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def on_run_end(self, metrics: dict[str, Any]) -> None:
        for key, value in scalar_metrics(metrics).items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        self.writer.add_text("report", run_summary(metrics), 0)
        self.writer.close()

    def close(self, error: BaseException | None = None) -> None:
        self.writer.close()


def _read_state(out_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((out_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
