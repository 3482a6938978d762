"""--track mlflow|tensorboard: the run read back through each tool's own reader."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import graft

TINY_ARGS = ["--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu", "--head-epochs", "1",
             "--finetune-epochs", "1", "--batch-size", "8", "--quiet"]


def test_track_mlflow_records_params_epochs_final_metrics_and_model(split_folder, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "runs" / "a"
    result = graft("train", str(split_folder), *TINY_ARGS, "--out", str(out), "--track", "mlflow")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the default: beside the run folder
    run_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    assert run.data.params["backbone"] == "tiny_cnn" and run.data.params["strategy"] == "fine-tune"
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx([r["val_accuracy"] for r in rows])
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "model.json", "metrics.json", "config.json", "report.md"} <= artifacts
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # not in the working directory


def test_track_tensorboard_writes_scalars_and_config_text(split_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = graft("train", str(split_folder), *TINY_ARGS, "--out", str(out), "--track", "tensorboard")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert {"config/text_summary", "report/text_summary"} <= set(events.Tags()["tensors"])
    assert events.Scalars("final/val_accuracy")[0].value == pytest.approx(
        json.loads((out / "metrics.json").read_text())["val_accuracy"])


def test_a_missing_tracking_library_is_one_line_and_exit_2(split_folder, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = graft("train", str(split_folder), *TINY_ARGS, "--out", str(tmp_path / "run"), "--track", "mlflow")
    assert result.returncode == 2
    assert result.stderr.strip() == ('error: --track mlflow needs mlflow, which is not installed: pip install '
                                     '"graftkit[mlflow]" (or drop --track).')
    assert not (tmp_path / "run").exists()  # refused before any work


def test_training_without_tracking_imports_neither_library():
    code = ("import sys\nimport graftkit.engine.fit\nfrom graftkit.engine.tracking import build_tracker\n"
            "print([m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
