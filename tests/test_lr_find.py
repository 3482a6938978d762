"""The learning-rate range test: its curve, its suggestion, its files and its use in graft train."""
from __future__ import annotations

import json

import numpy as np
import pytest

from graftkit import ConfigError, TrainConfig
from graftkit.engine.lr_find import lr_range_test, lr_schedule, suggest_lr
from graftkit.report.lr_find import save_lr_find

from .conftest import TINY, graft


def test_schedule_is_exponential_between_the_bounds():
    lrs = lr_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10.0)


def test_suggestion_is_the_minimum_over_ten_with_the_steepest_descent_reported():
    lrs = list(lr_schedule(1e-5, 1.0, 60))
    x = np.log10(lrs)
    loss = 2.0 - np.tanh(2 * (x + 2.5)) + np.where(x > -1, 50 * (x + 1) ** 2, 0)  # falls fastest at 3e-3
    suggestion, minimum, steepest = suggest_lr(lrs, list(loss))
    assert minimum == pytest.approx(lrs[int(np.argmin(loss))])
    assert suggestion == pytest.approx(minimum / 10)
    assert 1e-3 < steepest < 1e-2


def test_lr_range_test_on_cached_head_features(split_folder, tmp_path):
    cfg = TrainConfig(data_dir=split_folder, strategy="feature-extraction", **TINY)
    result = lr_range_test(cfg, start_lr=1e-5, end_lr=100.0, num_steps=40)
    assert result.phase == "head" and result.flag == "--lr"
    assert 10 <= len(result.lrs) <= 40 and len(result.lrs) == len(result.losses) == len(result.smoothed)
    assert result.start_lr <= result.suggestion <= result.end_lr
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    message = save_lr_find(result, tmp_path / "out", split_folder, "feature-extraction")
    assert (tmp_path / "out" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion and f"--lr {result.suggestion:.1e}" in message


def test_lr_range_test_full_model_for_scratch_and_bad_arguments(class_folder):
    cfg = TrainConfig(data_dir=class_folder, strategy="scratch", **TINY)
    result = lr_range_test(cfg, num_steps=12)
    assert result.phase == "full" and result.start_lr <= result.suggestion <= result.end_lr
    with pytest.raises(ConfigError, match="start_lr"):
        lr_range_test(cfg, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="phase"):
        lr_range_test(cfg, phase="middle")


def test_lr_find_cli_and_train_with_lr_find(class_folder, tmp_path):
    flags = ["--backbone", "tiny_cnn", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]
    found = graft("lr-find", str(class_folder), *flags, "--steps", "30", "--out", str(tmp_path / "lr"))
    assert found.returncode == 0, found.stderr
    assert "suggested learning rate" in found.stdout and "--lr " in found.stdout
    assert (tmp_path / "lr" / "lr_find.png").is_file() and (tmp_path / "lr" / "lr_find.json").is_file()

    out = tmp_path / "run"
    trained = graft("train", str(class_folder), *flags, "--head-epochs", "1", "--finetune-epochs", "1",
                    "--lr-find", "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    suggestion = json.loads((out / "lr_find.json").read_text())["suggestion"]
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == pytest.approx(float(f"{suggestion:.1e}"))
    assert (out / "lr_find.png").is_file()
    assert graft("report", str(out), "--gradcam", "0").returncode == 0
    assert "Learning-rate finder" in (out / "report.html").read_text()
