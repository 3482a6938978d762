from __future__ import annotations

import json

import pytest
import torch

import graftkit
from graftkit import ConfigError, TrainConfig, fit

from .conftest import TINY


def test_fit_learns_and_writes_the_run_folder(class_folder, tmp_path):
    run = graftkit.train(class_folder, strategy="scratch", out_dir=tmp_path / "run", lr=1e-2,
                         **{**TINY, "epochs": 6})
    history = run.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert run.metrics["val_accuracy"] == 1.0  # red vs blue is trivially separable
    out = run.out_dir
    for name in ("config.json", "history.jsonl", "metrics.json", "model.safetensors", "model.json",
                 "predictions.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "best_epoch", "classes", "num_train", "num_val", "strategy",
                "backbone", "seconds_total", "phases"):
        assert key in metrics
    assert metrics["num_train"] == 16 and metrics["num_val"] == 4
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and set(lines[0]) >= {"phase", "epoch", "train_loss", "val_loss",
                                                 "val_accuracy", "lr", "seconds"}
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "scratch" and config["image_size"] == 32


def test_fine_tune_runs_both_phases_and_reports_them(split_folder, tmp_path):
    run = fit(TrainConfig(data_dir=split_folder, strategy="fine-tune", out_dir=tmp_path / "ft", **TINY))
    assert [p["name"] for p in run.metrics["phases"]] == ["head", "finetune"]
    assert [h["phase"] for h in run.history] == ["head", "finetune"]


def test_feature_extraction_leaves_the_backbone_untouched(split_folder, tmp_path):
    from safetensors.torch import save_file

    source = graftkit.create_backbone("tiny_cnn")
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    run = fit(TrainConfig(data_dir=split_folder, strategy="feature-extraction", out_dir=tmp_path / "fe",
                          weights=weights, **TINY))
    trained = run.model.backbone.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(trained[key], value), key  # weights and BatchNorm buffers


def test_same_seed_same_metrics(class_folder, tmp_path):
    a = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "a", **TINY))
    b = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "b", **TINY))
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_existing_run_is_never_overwritten(class_folder, tmp_path):
    fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", **TINY))
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", **TINY))


def test_predict_and_evaluate_reproduce_the_run(split_folder, tmp_path):
    run = fit(TrainConfig(data_dir=split_folder, strategy="scratch", out_dir=tmp_path / "r", lr=1e-2,
                          **{**TINY, "epochs": 4}))
    classifier = graftkit.load(run.out_dir)
    result = classifier.evaluate(split_folder)
    assert result["accuracy"] == pytest.approx(run.metrics["val_accuracy"])
    assert result["loss"] == pytest.approx(run.metrics["val_loss"], rel=1e-4)
    assert sum(map(sum, result["confusion_matrix"])) == run.metrics["num_val"]
    predictions = classifier.predict(split_folder / "val" / "red", top_k=2)
    assert len(predictions) == 3 and len(predictions[0].top) == 2
    assert predictions[0].label in classifier.classes
    assert sum(p for _, p in predictions[0].top) <= 1.0 + 1e-6


def test_evaluate_on_class_root_uses_the_training_split(class_folder, tmp_path):
    run = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", seed=3, **TINY))
    result = graftkit.load(run.out_dir).evaluate(class_folder)
    assert result["num_images"] == run.metrics["num_val"]
    assert result["accuracy"] == pytest.approx(run.metrics["val_accuracy"])


def test_unknown_option_is_a_config_error(class_folder):
    with pytest.raises(ConfigError, match="unknown training option"):
        graftkit.train(class_folder, epoch=3)


@pytest.mark.parametrize("field, value", [("strategy", "magic"), ("batch_size", 0), ("lr", -1.0),
                                          ("val_fraction", 1.5), ("augment", "wild")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(data_dir="x", **{field: value})
