"""graft compare: one split and budget for every strategy and seed; compare.json; the report."""
from __future__ import annotations

import csv
import json

import pytest

from graftkit import ConfigError, TrainConfig, fit
from graftkit.workflows.compare import budget_fields, compare
from graftkit.report import write_report

from .conftest import TINY, graft
from .test_report import assert_self_contained

BASE = {k: v for k, v in TINY.items() if k not in ("epochs", "head_epochs", "finetune_epochs")}


def _val_paths(run_dir):
    with (run_dir / "predictions.csv").open() as f:
        return sorted(row["path"] for row in csv.DictReader(f))


def test_compare_trains_each_strategy_and_seed_on_one_split(class_folder, tmp_path):
    out = tmp_path / "C"
    result = compare(TrainConfig(data_dir=class_folder, lr=1e-2, seed=5, **BASE), out, num_seeds=2,
                     budget_epochs=3, isolate=False)
    strategies = ("scratch", "feature-extraction", "fine-tune")
    assert set(result["strategies"]) == set(strategies)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["seeds"] == [5, 6] and saved["split"]["seed"] == 5
    splits = set()
    for name in strategies:
        stats = saved["strategies"][name]
        accuracy = stats["val_accuracy"]
        assert 0 <= accuracy["mean"] <= 1 and len(accuracy["per_seed"]) == 2 and len(accuracy["interval"]) == 2
        assert accuracy["interval"][0] <= accuracy["mean"] <= accuracy["interval"][1]
        for key in ("time_to_target_seconds", "seconds", "peak_memory_mb", "epochs_to_target"):
            assert key in stats, key
        assert stats["peak_memory_mb"]["max"] > 0
        for seed in (5, 6):
            run_dir = out / name / f"seed{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert config["strategy"] == name and config["seed"] == seed and config["split_seed"] == 5
            history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
            assert len(history) == 3  # the same epoch budget for every strategy
            splits.add(tuple(_val_paths(run_dir)))
            assert (run_dir / "report.html").is_file() and (run_dir / "resources.json").is_file()
    assert len(splits) == 1  # every run validated on the same images
    fine_tune = json.loads((out / "fine-tune" / "seed5" / "config.json").read_text())
    assert (fine_tune["head_epochs"], fine_tune["finetune_epochs"]) == (1, 2)
    assert "Student-t" in saved["definitions"]["interval"] and saved["target_accuracy"] > 0
    assert_self_contained(out / "report.html")
    text = (out / "report.html").read_text()
    assert "Learning curves" in text and "feature-extraction" in text and "95% interval" in text

    # the report regenerates from the folder alone, and a second compare reuses the finished runs
    (out / "compare.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "strategies"}))
    write_report(out)  # rebuilds the summary in compare.json from the run folders, keeps seeds and budget
    assert_self_contained(out / "report.html")
    rebuilt = json.loads((out / "compare.json").read_text())
    assert rebuilt["seeds"] == [5, 6] and rebuilt["strategies"] == saved["strategies"]
    again = compare(TrainConfig(data_dir=class_folder, lr=1e-2, seed=5, **BASE), out, num_seeds=2,
                    budget_epochs=3, isolate=False, write_reports=False)
    assert again["strategies"]["scratch"]["val_accuracy"] == result["strategies"]["scratch"]["val_accuracy"]


@pytest.mark.slow  # each run in a fresh spawned process that imports torch: ~1 min on 2 cores
def test_compare_cli_isolated_runs_and_a_time_budget(class_folder, tmp_path):
    out = tmp_path / "C"
    done = graft("compare", str(class_folder), "--out", str(out), "--strategies", "scratch,fine-tune",
                 "--seeds", "1", "--budget-epochs", "4", "--budget-minutes", "0.0001", "--backbone", "tiny_cnn",
                 "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "compare.json").read_text())
    assert list(saved["strategies"]) == ["scratch", "fine-tune"] and saved["budget"]["minutes"] == 0.0001
    for name in ("scratch", "fine-tune"):
        metrics = json.loads((out / name / "seed0" / "metrics.json").read_text())
        assert metrics["stopped_early"]["reason"] == "max_seconds"  # stopped by the clock after epoch 1
        assert len(metrics["phases"]) >= 1 and metrics["stopped_early"]["after_epoch"] == 1
        resources = json.loads((out / name / "seed0" / "resources.json").read_text())
        assert resources["isolated_process"] and resources["peak_rss_mb"] > 0
    assert not (out / "report.html").exists()


def test_budget_split_and_bad_arguments(class_folder, tmp_path):
    assert budget_fields("fine-tune", 6) == {"head_epochs": 2, "finetune_epochs": 4}
    assert budget_fields("fine-tune", 2) == {"head_epochs": 1, "finetune_epochs": 1}
    assert budget_fields("scratch", 6) == {"epochs": 6}
    base = TrainConfig(data_dir=class_folder, **BASE)
    with pytest.raises(ConfigError, match="unknown strategy"):
        compare(base, tmp_path / "x", strategies=["scratch", "magic"], isolate=False)
    with pytest.raises(ConfigError, match="at least 2 epochs"):
        compare(base, tmp_path / "y", budget_epochs=1, isolate=False)


def test_max_seconds_stops_between_epochs(class_folder, tmp_path):
    run = fit(TrainConfig(data_dir=class_folder, strategy="scratch", out_dir=tmp_path / "r", max_seconds=1e-6,
                          **{**TINY, "epochs": 5}))
    assert len(run.history) == 1 and run.metrics["stopped_early"]["after_epoch"] == 1
    assert (run.out_dir / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="max_seconds"):
        TrainConfig(data_dir=class_folder, max_seconds=0)
