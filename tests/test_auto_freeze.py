"""--freeze auto: candidates, the choice (ties to the faster), the table in the run folder."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from graftkit import ConfigError, TrainConfig, fit
from graftkit.workflows.freeze_auto import candidate_depths, depth_label, fit_auto_freeze, pick_depth, train_run

from .conftest import TINY, graft


def test_candidate_depths_are_bounded_and_span_all_to_none():
    assert candidate_depths(7) == [7, 6, 5, 3, 0]
    assert candidate_depths(4) == [4, 3, 2, 0]
    assert candidate_depths(1) == [1, 0]
    assert all(len(candidate_depths(n)) <= 5 for n in range(1, 30))
    assert depth_label(7, 7).startswith("all frozen") and depth_label(6, 7) == "last stage trainable"
    assert depth_label(5, 7) == "last 2 stages trainable" and depth_label(0, 7).startswith("none frozen")


def test_pick_depth_takes_the_best_and_breaks_ties_by_speed():
    rows = [{"depth": 4, "label": "a", "val_accuracy": 0.80, "seconds": 1.0},
            {"depth": 3, "label": "b", "val_accuracy": 0.90, "seconds": 5.0},
            {"depth": 0, "label": "c", "val_accuracy": 0.92, "seconds": 20.0}]
    chosen, reason = pick_depth(rows)
    assert chosen["depth"] == 0 and "best validation accuracy" in reason
    rows[1]["val_accuracy"] = 0.918  # within half a point of the best: the faster one wins
    chosen, reason = pick_depth(rows)
    assert chosen["depth"] == 3 and "fastest" in reason


def _stub_train(accuracy_by_depth, seconds_by_depth, calls):
    """A stand-in for fit: the freeze depth decides accuracy and time; records every config."""
    def train(cfg, scan=None):
        depth = 4 if cfg.strategy == "feature-extraction" else cfg.freeze
        calls.append(cfg)
        if cfg.out_dir is not None:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
        epochs = cfg.total_epochs
        history = [{"epoch": e + 1, "val_accuracy": accuracy_by_depth[depth], "seconds": seconds_by_depth[depth]}
                   for e in range(epochs)]
        return SimpleNamespace(history=history, metrics={"val_accuracy": accuracy_by_depth[depth],
                                                         "seconds_total": epochs * seconds_by_depth[depth],
                                                         "best_epoch": epochs}, out_dir=cfg.out_dir)
    return train


def test_fit_auto_freeze_measures_each_depth_then_trains_the_best(class_folder, tmp_path):
    calls: list[TrainConfig] = []
    train = _stub_train({4: 0.7, 3: 0.95, 2: 0.8, 0: 0.9}, {4: 0.1, 3: 1.0, 2: 2.0, 0: 4.0}, calls)
    cfg = TrainConfig(data_dir=class_folder, freeze_auto=True, out_dir=tmp_path / "run",
                      **{**TINY, "epochs": None, "head_epochs": 1, "finetune_epochs": 4})
    fit_auto_freeze(cfg, train=train)
    tried = [(c.strategy, c.freeze) for c in calls[:-1]]
    assert tried == [("feature-extraction", 0), ("fine-tune", 3), ("fine-tune", 2), ("fine-tune", 0)]
    assert all(c.finetune_epochs == 2 for c in calls[1:-1])  # the short budget: half of 4
    assert calls[0].epochs == 3  # all frozen: as many epochs as the others
    final = calls[-1]
    assert final.freeze == 3 and final.finetune_epochs == 4 and not final.freeze_auto
    assert final.out_dir == tmp_path / "run"
    table = json.loads((tmp_path / "run" / "freeze_auto.json").read_text())
    assert table["chosen_depth"] == 3 and "best validation accuracy" in table["reason"]
    assert [r["depth"] for r in table["candidates"]] == [4, 3, 2, 0]
    for row in table["candidates"]:
        assert set(row) >= {"depth", "label", "val_accuracy", "seconds"}
    # seconds exclude the shared head phase: 2 unfrozen epochs of the depth's cost
    assert table["candidates"][1]["seconds"] == pytest.approx(2.0)


def test_freeze_auto_chooses_feature_extraction_when_it_wins(class_folder, tmp_path):
    calls: list[TrainConfig] = []
    train = _stub_train({4: 0.95, 3: 0.9, 2: 0.9, 0: 0.9}, {4: 0.1, 3: 1.0, 2: 2.0, 0: 4.0}, calls)
    cfg = TrainConfig(data_dir=class_folder, freeze_auto=True, out_dir=tmp_path / "run", **TINY)
    fit_auto_freeze(cfg, train=train)
    assert calls[-1].strategy == "feature-extraction" and calls[-1].epochs == 2  # head 1 + finetune 1


def test_freeze_auto_end_to_end_from_the_cli(class_folder, tmp_path):
    out = tmp_path / "run"
    done = graft("train", str(class_folder), "--freeze", "auto", "--backbone", "tiny_cnn", "--image-size", "32",
                 "--batch-size", "8", "--device", "cpu", "--head-epochs", "1", "--finetune-epochs", "2",
                 "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "freeze auto: chose" in done.stdout
    table = json.loads((out / "freeze_auto.json").read_text())
    assert len(table["candidates"]) == 4
    best = max(r["val_accuracy"] for r in table["candidates"])
    chosen = next(r for r in table["candidates"] if r["depth"] == table["chosen_depth"])
    assert chosen["val_accuracy"] >= best - 0.005
    config = json.loads((out / "config.json").read_text())
    assert config["freeze_auto"] is False  # the final run trains the chosen depth, resumable as it is
    assert graft("report", str(out), "--gradcam", "0").returncode == 0
    assert "Freeze depth chosen by measurement" in (out / "report.html").read_text()
    bad = graft("train", str(class_folder), "--freeze", "some")
    assert bad.returncode == 2 and "--freeze" in bad.stderr


def test_freeze_auto_needs_fine_tune(class_folder):
    with pytest.raises(ConfigError, match="fine-tune"):
        TrainConfig(data_dir=class_folder, strategy="scratch", freeze_auto=True)
    with pytest.raises(ConfigError, match="finetune-epochs"):
        train_run(TrainConfig(data_dir=class_folder, strategy="feature-extraction", **TINY).replace(freeze_auto=False)
                              .replace(strategy="fine-tune", freeze_auto=True, finetune_epochs=0, head_epochs=1))
    with pytest.raises(ConfigError, match="graftkit.train"):  # fit trains one run; the search is a workflow
        fit(TrainConfig(data_dir=class_folder, freeze_auto=True, **TINY))
