from __future__ import annotations

import io
import json

from PIL import Image

from .conftest import TINY, run_graft

TINY_FLAGS = ["--backbone", "tiny_cnn", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def test_version():
    result = run_graft("--version")
    assert result.returncode == 0 and result.stdout.startswith("graftkit ")


def test_bad_folder_exits_2_naming_each_problem_then_trains_with_skip(class_folder, tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good, "JPEG")
    truncated = class_folder / "red" / "cut.jpg"
    truncated.write_bytes(good.getvalue()[:300])
    text = class_folder / "blue" / "x.jpg"
    text.write_text("plain text, not a JPEG")
    (class_folder / "green").mkdir()

    first = run_graft("train", str(class_folder), *TINY_FLAGS, "--out", str(tmp_path / "r1"))
    assert first.returncode == 2
    assert "Traceback" not in first.stderr and first.stderr.count("\n") == 1
    assert str(class_folder / "green") in first.stderr

    (class_folder / "green").rmdir()
    second = run_graft("train", str(class_folder), *TINY_FLAGS, "--out", str(tmp_path / "r2"))
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert str(truncated) in second.stderr and str(text) in second.stderr
    assert "--skip-bad-images" in second.stderr

    third = run_graft("train", str(class_folder), *TINY_FLAGS, "--strategy", "scratch", "--epochs", "1",
                      "--skip-bad-images", "--out", str(tmp_path / "r3"))
    assert third.returncode == 0, third.stderr
    skipped = (tmp_path / "r3" / "skipped.csv").read_text()
    assert str(truncated) in skipped and str(text) in skipped


def test_train_predict_evaluate_roundtrip(split_folder, tmp_path):
    out = tmp_path / "run"
    trained = run_graft("train", str(split_folder), *TINY_FLAGS, "--strategy", "scratch", "--epochs", "3",
                        "--lr", "0.01", "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    assert "epoch  3/3" in trained.stdout  # plain line-per-epoch mode when not a terminal
    assert "\r" not in trained.stdout
    image = split_folder / "val" / "red" / "000.png"
    predicted = run_graft("predict", str(out), str(image), "--format", "json", "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert rows[0]["path"] == str(image) and rows[0]["class"] in ("red", "green", "blue")
    assert 0 <= rows[0]["probability"] <= 1 and len(rows[0]["top"]) == 2
    evaluated = run_graft("evaluate", str(out), str(split_folder), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(json.loads(evaluated.stdout)["accuracy"] - metrics["val_accuracy"]) < 1e-9


def test_predict_skips_unreadable_files_with_a_line(split_folder, tmp_path):
    out = tmp_path / "run"
    assert run_graft("train", str(split_folder), *TINY_FLAGS, "--strategy", "scratch", "--epochs", "1",
                     "--out", str(out)).returncode == 0
    (tmp_path / "bad.jpg").write_text("nope")
    result = run_graft("predict", str(out), str(tmp_path / "bad.jpg"),
                       str(split_folder / "val" / "red" / "000.png"), "--format", "csv")
    assert result.returncode == 0
    assert "skipped:" in result.stderr and "bad.jpg" in result.stderr
    assert result.stdout.splitlines()[0].startswith("path,class_1,probability_1")


def test_missing_model_and_bad_options_exit_2(tmp_path):
    missing = run_graft("predict", str(tmp_path / "nothing"), str(tmp_path))
    assert missing.returncode == 2 and "no trained model" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_graft("train", str(tmp_path), "--strategy", "magic")
    assert bad.returncode == 2 and "strategy" in bad.stderr and "Traceback" not in bad.stderr


def test_check_data_summarises(split_folder):
    result = run_graft("check-data", str(split_folder))
    assert result.returncode == 0
    assert "3 classes" in result.stdout and "24 train / 9 val" in result.stdout
