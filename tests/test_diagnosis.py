"""The diagnosis: each rule on synthetic run files, the flags it names, the report panel, train's lines."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from graftkit.report import load_run, write_report
from graftkit.report.diagnosis import NOTHING_TO_SAY, diagnose, diagnosis_lines

from .conftest import graft, tiny_flags

CLASSES = ["ants", "bees"]


def _epoch(epoch: int, phase: str, train_acc: float, val_acc: float, train_loss: float, val_loss: float) -> dict:
    return {"epoch": epoch, "phase": phase, "train_accuracy": train_acc, "val_accuracy": val_acc,
            "train_loss": train_loss, "val_loss": val_loss, "seconds": 1.0, "elapsed": float(epoch)}


HEALTHY = [_epoch(1, "head", 0.85, 0.90, 0.50, 0.35), _epoch(2, "head", 0.90, 0.925, 0.40, 0.30),
           _epoch(3, "finetune", 0.92, 0.935, 0.35, 0.27), _epoch(4, "finetune", 0.93, 0.94, 0.32, 0.26)]


def _predictions(recalls: dict[str, float], support: int = 30) -> list[dict]:
    rows = []
    for cls, recall in recalls.items():
        other = next(c for c in CLASSES if c != cls)
        for i in range(support):
            right = i < round(recall * support)
            rows.append({"path": f"/data/val/{cls}/{i:03d}.jpg", "label": cls, "predicted": cls if right else other,
                         "confidence": 0.9, "true_class_probability": 0.9 if right else 0.1 + i / 1000})
    return rows


def write_run(folder: Path, history=HEALTHY, recalls=None, metrics=None, config=None, label_issues=None) -> Path:
    """A run folder written the way graftkit writes one, with these numbers."""
    folder.mkdir(parents=True)
    predictions = _predictions(recalls or {"ants": 0.93, "bees": 0.93})
    best = max(history, key=lambda r: r["val_accuracy"])
    base = {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"], "best_epoch": best["epoch"],
            "best_phase": best["phase"], "strategy": "fine-tune", "classes": CLASSES, "num_train": 200,
            "num_val": len(predictions), "diverged": [], "stopped_early": None,
            "class_counts": {"train": {"ants": 100, "bees": 100}, "val": {"ants": 30, "bees": 30}}}
    (folder / "metrics.json").write_text(json.dumps({**base, **(metrics or {})}))
    (folder / "config.json").write_text(json.dumps({"strategy": "fine-tune", "augment": "light",
                                                    "label_smoothing": 0.1, "finetune_lr": 1e-4, **(config or {})}))
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "predicted", "confidence", "true_class_probability"])
        writer.writeheader()
        writer.writerows(predictions)
    if label_issues is not None:
        with (folder / "label_issues.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", "path", "split", "given_label", "suggested_label", "label_quality"])
            writer.writerows(label_issues)
    return folder


def rules(folder: Path) -> dict:
    return {f.rule: f for f in diagnose(load_run(folder))}


def test_a_healthy_run_has_nothing_to_fix(tmp_path):
    findings = diagnose(load_run(write_run(tmp_path / "run")))
    assert findings == []
    assert diagnosis_lines(findings) == [NOTHING_TO_SAY]


def test_finetune_that_lowers_val_accuracy_suggests_feature_extraction(tmp_path):
    history = [_epoch(1, "head", 0.85, 0.92, 0.5, 0.3), _epoch(2, "head", 0.9, 0.95, 0.4, 0.25),
               _epoch(3, "finetune", 0.92, 0.90, 0.35, 0.3), _epoch(4, "finetune", 0.93, 0.91, 0.32, 0.29)]
    found = rules(write_run(tmp_path / "run", history))["finetune-hurt"]
    assert found.severity == "high"  # 4 points lost
    assert "head epoch 2 (95.0 %)" in found.seen and "peaked at 91.0 %" in found.seen
    assert found.try_next[0].startswith("--strategy feature-extraction")
    assert found.try_next[1].startswith("--finetune-lr 3e-05")
    assert found.try_next[2].startswith("--freeze auto")


def test_train_far_above_val_is_overfitting(tmp_path):
    history = [*HEALTHY[:3], _epoch(4, "finetune", 0.99, 0.94, 0.05, 0.26)]
    assert "overfitting" not in rules(write_run(tmp_path / "run", history))  # a 5-point gap is normal
    history = [*HEALTHY[:3], _epoch(4, "finetune", 0.99, 0.80, 0.05, 0.26)]
    found = rules(write_run(tmp_path / "run2", history))["overfitting"]
    assert "gap of 19.0 points" in found.seen
    assert found.try_next[0].startswith("--augment strong")
    assert any(step.startswith("--label-smoothing 0.2") for step in found.try_next)
    assert any("--pseudo-label" in step for step in found.try_next)


def test_overfitting_remedies_follow_the_augmentation_in_use(tmp_path):
    history = [*HEALTHY[:3], _epoch(4, "finetune", 0.99, 0.80, 0.05, 0.26)]
    found = rules(write_run(tmp_path / "run", history, config={"augment": "strong"}))["overfitting"]
    assert found.try_next[0].startswith("--mixup 0.2")
    # feature extraction trains on cached crops: augmentation reaches it only through cached views
    history = [_epoch(e, "head", 0.99, 0.80, 0.05, 0.26) for e in (1, 2, 3)]
    extraction = {"strategy": "feature-extraction"}
    found = rules(write_run(tmp_path / "fe", history, metrics=extraction, config=extraction))["overfitting"]
    assert found.try_next[0].startswith("--augment strong --cache-views 4 (now light, 1 view(s))")


def test_val_loss_rising_while_train_loss_falls(tmp_path):
    history = [_epoch(1, "head", 0.85, 0.90, 0.50, 0.30), _epoch(2, "head", 0.88, 0.93, 0.40, 0.25),
               _epoch(3, "finetune", 0.90, 0.93, 0.30, 0.29), _epoch(4, "finetune", 0.91, 0.93, 0.20, 0.33)]
    found = rules(write_run(tmp_path / "run", history))["val-loss-rising"]
    assert "from 0.250 (epoch 2) to 0.330 (epoch 4)" in found.seen
    assert "0.400 to 0.200" in found.seen
    assert "--finetune-epochs" in found.try_next[0]


def test_a_class_with_low_recall_is_named_with_its_missed_images(tmp_path):
    found = rules(write_run(tmp_path / "run", recalls={"ants": 1.0, "bees": 0.6}))["low-recall"]
    assert found.title == "Class 'bees' is often missed"
    assert "recall 60.0 % (18 of 30" in found.seen and "taken for 'ants' (12x)" in found.seen
    assert len(found.images) == 8 and all("/val/bees/" in p for p in found.images)
    assert found.images[0] == "/data/val/bees/018.jpg"  # the lowest p(true) first


def test_too_few_images_per_class(tmp_path):
    metrics = {"class_counts": {"train": {"ants": 7, "bees": 100}, "val": {"ants": 30, "bees": 30}}}
    found = rules(write_run(tmp_path / "run", metrics=metrics))["few-images"]
    assert found.severity == "high" and "'ants' has 7 training images" in found.seen
    assert any("--pseudo-label --unlabeled" in step for step in found.try_next)


def test_likely_label_errors_from_label_issues_csv(tmp_path):
    issues = [[1, "/data/train/ants/12.jpg", "train", "ants", "bees", "0.010000"],
              [2, "/data/val/bees/3.jpg", "val", "bees", "ants", "0.020000"]]
    found = rules(write_run(tmp_path / "run", config={"data_dir": "/photos"}, label_issues=issues))["label-issues"]
    assert found.try_next[1].startswith("graft check-data /photos --label-issues")  # a command to copy
    assert "2 of 260 images" in found.seen and "(1 in validation)" in found.seen
    assert "'12.jpg' labelled 'ants', looks like 'bees'" in found.seen
    assert found.images == ("/data/train/ants/12.jpg", "/data/val/bees/3.jpg")


def test_divergence(tmp_path):
    found = rules(write_run(tmp_path / "run", metrics={"diverged": [{"phase": "finetune", "epoch": 4}]}))
    assert found["diverged"].severity == "high" and "finetune epoch 4" in found["diverged"].seen
    assert found["diverged"].try_next[0] == "a lower --finetune-lr (a third of it)"


def test_still_improving_at_the_last_epoch(tmp_path):
    history = [*HEALTHY[:2], _epoch(3, "finetune", 0.92, 0.94, 0.35, 0.27), _epoch(4, "finetune", 0.93, 0.96, 0.3, 0.2)]
    found = rules(write_run(tmp_path / "run", history))["still-improving"]
    assert "3.5 points" in found.seen


def test_few_validation_images(tmp_path):
    found = rules(write_run(tmp_path / "run", metrics={"num_val": 20, "val_accuracy": 0.9}))["small-validation"]
    assert "one image moves accuracy by 5.0 %" in found.seen and "69.9 %" in found.seen  # Wilson low bound


def test_stopped_by_the_time_budget(tmp_path):
    stop = {"reason": "max_seconds", "after_epoch": 2, "max_seconds": 60}
    assert "after epoch 2" in rules(write_run(tmp_path / "run", metrics={"stopped_early": stop}))["stopped-early"].seen


def test_every_flag_a_finding_names_is_a_real_option(tmp_path):
    """Findings name graftkit's flags: each must exist on `graft train` (or the command it names)."""
    import re

    import typer

    from graftkit.cli import app

    history = [_epoch(1, "head", 0.85, 0.92, 0.5, 0.2), _epoch(2, "head", 0.9, 0.95, 0.4, 0.25),
               _epoch(3, "finetune", 0.99, 0.70, 0.1, 0.4), _epoch(4, "finetune", 0.999, 0.71, 0.05, 0.5)]
    metrics = {"diverged": [{"phase": "head", "epoch": 2}], "num_val": 20,
               "stopped_early": {"after_epoch": 4, "max_seconds": 9},
               "class_counts": {"train": {"ants": 7, "bees": 100}, "val": {"ants": 30, "bees": 30}}}
    issues = [[1, "/data/train/ants/12.jpg", "train", "ants", "bees", "0.01"]]
    folder = write_run(tmp_path / "run", history, {"ants": 1.0, "bees": 0.3}, metrics, label_issues=issues)
    findings = diagnose(load_run(folder))
    assert len({f.rule for f in findings}) >= 9
    command = typer.main.get_command(app)
    options = {cmd: {o for p in c.params for o in p.opts} for cmd, c in command.commands.items()}
    for f in findings:
        for step in f.try_next:
            named = re.search(r"graft ([a-z-]+)", step)
            for flag in re.findall(r"--[a-z][a-z-]+", step):
                cmd = named.group(1) if named and flag in step[named.end():] else "train"
                assert flag in options[cmd], (f.rule, cmd, flag)


def test_report_opens_with_the_diagnosis_panel_and_the_label_errors(session_run, tmp_path):
    from .test_report import assert_self_contained

    run = tmp_path / "run"
    shutil.copytree(session_run, run)
    for name in ("report.html", "label_issues.csv"):
        (run / name).unlink(missing_ok=True)
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    with (run / "label_issues.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "path", "split", "given_label", "suggested_label", "label_quality"])
        writer.writerow([1, rows[0]["path"], "val", rows[0]["label"], "blue", "0.001"])
    text = write_report(run).read_text()
    assert_self_contained(run / "report.html")
    panel = text.index("Diagnosis: what to fix")
    assert panel < text.index("Learning curves")
    assert text.index("Likely label errors", panel) < text.index("Learning curves")  # a finding in the panel
    assert 'id="label-issues"' in text and "looks like" in text
    section = text[text.index('id="label-issues"'):]
    assert section.index('src="data:image/jpeg') < section.index("</section>")  # its thumbnail
    (run / "label_issues.csv").unlink()
    healthy = write_run(tmp_path / "healthy")
    assert "Nothing to fix found" in write_report(healthy).read_text()


def test_train_ends_with_the_diagnosis_and_the_label_issues(split_folder, tmp_path):
    args = tiny_flags("feature-extraction")
    result = graft("train", str(split_folder), "--strategy", "feature-extraction", "--out", str(tmp_path / "run"),
                   "--plain", *args)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "label issues:" in out and "Diagnosis" in out
    assert out.index("label issues:") < out.index("Diagnosis")
    assert f"graft report {tmp_path / 'run'}" in out
