"""Misleading behaviour (issue 14, items 14-20): advice that agrees with the states, refused
conflicting inputs, and every problem listed where the user looks."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from graftkit import ConfigError, DataError, TrainConfig, fit, scan_data

from .conftest import TINY, write_color_images

fit_module = importlib.import_module("graftkit.engine.fit")
TrainingData = importlib.import_module("graftkit.engine.prepare").TrainingData


# 16. Sub-folders shared by classes are not splits unless they are named like splits.

def test_classes_with_matching_year_folders_are_classes(tmp_path):
    root = tmp_path / "data"
    for cls, rgb in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        for year in ("2019", "2020"):
            write_color_images(root / cls / year, rgb, 3, seed=int(year))
    scan = scan_data(root, val_fraction=0.3)
    assert scan.layout == "classes" and scan.classes == ["cats", "dogs"]
    assert len(scan.train) + len(scan.val) == 12


def test_shared_split_named_sub_folders_are_still_refused(tmp_path):
    root = tmp_path / "data"
    for part in ("part1", "part2"):
        for split in ("train", "val"):
            write_color_images(root / part / split / "cat", (1, 1, 1), 1)
    with pytest.raises(DataError, match="look like splits"):
        scan_data(root)


# 17. lr-find: a loss that turns NaN is divergence, and no usable range is an error with the fix.

def test_lr_find_that_blows_up_at_once_is_an_error_not_a_suggestion(split_folder):
    from graftkit.engine.lr_find import lr_range_test

    cfg = TrainConfig(data_dir=split_folder, **TINY)
    with pytest.raises(ConfigError, match="no usable range.*Lower --start-lr"):
        lr_range_test(cfg, start_lr=1e30, end_lr=1e31, num_steps=20)


@pytest.mark.parametrize("start, end", [(1e-5, float("inf")), (float("nan"), 1.0), (-1.0, 1.0)])
def test_lr_find_refuses_non_finite_or_negative_rates(split_folder, start, end):
    from graftkit.engine.lr_find import lr_range_test

    with pytest.raises(ConfigError, match="finite 0 < start_lr < end_lr"):
        lr_range_test(TrainConfig(data_dir=split_folder, **TINY), start_lr=start, end_lr=end)


def test_lr_find_message_never_says_never_diverged_after_a_divergence(tmp_path):
    from graftkit.engine.lr_find import LRFindResult
    from graftkit.report.lr_find import save_lr_find

    lrs = [1e-3 * 10 ** (i / 4) for i in range(12)]
    losses = [2.0 - 0.1 * i for i in range(11)] + [float("nan")]
    result = LRFindResult(lrs=lrs, losses=losses, smoothed=losses, suggestion=lrs[10] / 10, minimum_lr=lrs[10],
                          steepest_lr=None, phase="head", start_lr=lrs[0], end_lr=lrs[-1], num_steps=12,
                          stopped="diverged (non-finite loss) at step 12", seconds=0.1)
    message = save_lr_find(result, tmp_path / "lr", "data", "fine-tune")
    assert "never diverged" not in message


# 14. An interrupt at any point of training leaves a state that the advice printed continues from.

def _interrupt_at(monkeypatch, epoch_index: int, action=None) -> None:
    real = fit_module._train_epoch

    def train_epoch(*args, **kwargs):
        if args[5] == epoch_index:  # the global epoch index
            if action is None:
                raise KeyboardInterrupt
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_train_epoch", train_epoch)


def _options(split_folder):
    # checkpoint_every is the default (10 s): no checkpoint is due before the head phase ends
    return dict(data_dir=split_folder, strategy="fine-tune", precision="fp32",
                **{**TINY, "epochs": None, "head_epochs": 2, "finetune_epochs": 1})


def test_ctrl_c_in_the_first_epoch_resumes_to_the_same_weights(split_folder, tmp_path, monkeypatch):
    import torch

    whole = fit(TrainConfig(out_dir=tmp_path / "whole", **_options(split_folder)))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 0)
        with pytest.raises(fit_module.Interrupted, match="start of training. Continue with: graft train --resume"):
            fit(TrainConfig(out_dir=tmp_path / "cut", **_options(split_folder)))
    resumed = fit(TrainConfig.from_run(tmp_path / "cut", resume=True))
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(split_folder, tmp_path, monkeypatch):
    import os
    import signal

    class StillDefault(Exception):
        pass

    def outside_training(signum, frame):  # what the old code left in place: SIGTERM not handled by fit
        raise StillDefault

    previous = signal.signal(signal.SIGTERM, outside_training)
    try:
        with monkeypatch.context() as patch:
            _interrupt_at(patch, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
            with pytest.raises(fit_module.Interrupted, match=r"\(SIGTERM\) during epoch 2.*--resume") as info:
                fit(TrainConfig(out_dir=tmp_path / "cut", **_options(split_folder)))
        assert info.value.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is outside_training  # put back after training
    finally:
        signal.signal(signal.SIGTERM, previous)
    resumed = fit(TrainConfig.from_run(tmp_path / "cut", resume=True))
    assert len(resumed.history) == 3 and (tmp_path / "cut" / "metrics.json").is_file()


def test_interrupt_before_any_checkpoint_says_run_it_again_and_that_works(split_folder, tmp_path, monkeypatch):
    real = TrainingData.batches_for

    def batches_for(self, *args, **kwargs):
        raise KeyboardInterrupt  # while the first phase's features are being cached

    with monkeypatch.context() as patch:
        patch.setattr(TrainingData, "batches_for", batches_for)
        with pytest.raises(fit_module.Interrupted, match="nothing to resume. Run the same command again"):
            fit(TrainConfig(out_dir=tmp_path / "cut", **_options(split_folder)))
    assert TrainingData.batches_for is real
    run = fit(TrainConfig(out_dir=tmp_path / "cut", **_options(split_folder)))
    assert len(run.history) == 3


def test_a_model_without_checkpoint_is_not_sent_back_and_forth(split_folder, tmp_path):
    from graftkit import CheckpointError

    fit(TrainConfig(out_dir=tmp_path / "old", **_options(split_folder)))
    for name in ("checkpoint.pt", "metrics.json"):  # what an older graftkit left after an early Ctrl-C
        (tmp_path / "old" / name).unlink()
    with pytest.raises(CheckpointError, match="cannot be resumed. Start a new run with another --out"):
        fit(TrainConfig.from_run(tmp_path / "old", resume=True))
    with pytest.raises(ConfigError, match="already holds a run; pass another --out"):
        fit(TrainConfig(out_dir=tmp_path / "old", **_options(split_folder)))


# 18. Flags given with --resume are refused when they differ from the saved config.

def _interrupted_run(split_folder, out: Path, monkeypatch) -> Path:
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 1)
        with pytest.raises(fit_module.Interrupted):
            fit(TrainConfig(out_dir=out, **_options(split_folder)))
    return out


def test_resume_refuses_flags_that_change_the_saved_config(split_folder, tmp_path, monkeypatch):
    from graftkit.errors import GraftError

    from .conftest import invoke_graft

    run = _interrupted_run(split_folder, tmp_path / "cut", monkeypatch)
    with pytest.raises(ConfigError) as info:
        invoke_graft("train", "--resume", str(run), "--epochs", "99", "--lr", "5", "--no-pretrained")
    message = str(info.value)
    assert "--epochs 99 (saved: 3)" in message  # fine-tune: epochs is the total, 2 + 1 and "--lr 5.0 (saved: 0.003)" in message
    assert "--no-pretrained (saved: True)" in message and "\n" not in message
    assert not (run / "metrics.json").exists()  # nothing ran
    with pytest.raises(GraftError, match="--lr-find"):
        invoke_graft("train", "--resume", str(run), "--lr-find")


def test_resume_accepts_harmless_and_unchanged_flags(split_folder, tmp_path, monkeypatch):
    from .conftest import invoke_graft

    run = _interrupted_run(split_folder, tmp_path / "cut", monkeypatch)
    result = invoke_graft("train", "--resume", str(run), "--quiet", "--device", "cpu", "--num-workers", "0",
                          "--checkpoint-every", "0", "--head-epochs", "2", "--backbone", "tiny_cnn", "--freeze", "0",
                          "--out", str(run))
    assert result.exit_code == 0 and "val_accuracy" in result.output
    assert (run / "metrics.json").is_file()


# 20. Any file name survives skipped.csv; identical images under two classes are a label conflict.

def test_names_with_newlines_and_tabs_round_trip_through_skipped_csv(class_folder, tmp_path):
    from graftkit.report.runfiles import load_run

    odd = [class_folder / "red" / "bad\nname.png", class_folder / "red" / "tab\there, \"q\".png",
           class_folder / "blue" / "notes\n.txt"]
    odd[0].write_bytes(b"not a png")
    odd[1].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    odd[2].write_text("a text file")
    fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", skip_bad_images=True,
                    strategy="scratch", **{**TINY, "epochs": 1}))
    assert not (tmp_path / "r" / "skipped.txt").exists()
    skipped = load_run(tmp_path / "r").skipped
    assert sorted(p for p, _ in skipped) == sorted(str(p) for p in odd)
    assert dict(skipped)[str(odd[2])] == "not an image file name"
    (tmp_path / "r" / "skipped.csv").write_text("path\treason\n/x.png\tbad\n")  # edited by hand
    with pytest.raises(ConfigError, match="skipped.csv.*expected the columns path,reason"):
        load_run(tmp_path / "r")


def test_identical_images_under_two_classes_are_a_label_conflict(class_folder, tmp_path):
    from graftkit.report import write_report
    from graftkit.report.runfiles import load_run

    from .conftest import invoke_graft

    copy = class_folder / "blue" / "looks-blue.png"
    copy.write_bytes((class_folder / "red" / "003.png").read_bytes())
    checked = invoke_graft("check-data", str(class_folder))
    assert "label conflict: same bytes in" in checked.output and str(copy) in checked.output
    assert "1 image(s) appear under more than one class" in checked.output
    run = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", strategy="scratch", **{**TINY, "epochs": 1}))
    assert run.metrics["num_label_conflicts"] == 1
    conflicts = load_run(tmp_path / "r").label_conflicts
    assert sorted(conflicts) == [("1", "blue", str(copy)), ("1", "red", str(class_folder / "red" / "003.png"))]
    html = write_report(tmp_path / "r", tmp_path / "report.html", gradcam=0).read_text()
    assert "Label conflicts (1)" in html and "looks-blue.png" in html


# 15. An --out inside DATA_DIR is refused; graftkit's own folders found there are not classes.

def test_train_and_subsample_refuse_an_out_inside_the_data(class_folder, tmp_path):
    from graftkit.errors import GraftError

    from .conftest import invoke_graft

    link = tmp_path / "link"
    link.symlink_to(class_folder)
    for out in (class_folder / "runs" / "r1", link / "r2", class_folder):
        with pytest.raises(ConfigError) as info:
            fit(TrainConfig(data_dir=class_folder, out_dir=out, **TINY))
        message = str(info.value)
        assert str(out) in message and str(class_folder.resolve()) in message and "outside DATA_DIR" in message
    with pytest.raises(GraftError, match="inside DATA_DIR"):
        invoke_graft("subsample", str(class_folder), "--per-class", "2", "--out", str(link / "sub"))
    with pytest.raises(GraftError, match="inside DATA_DIR"):
        invoke_graft("lr-find", str(class_folder), "--out", str(class_folder / "lr"))
    assert sorted(p.name for p in class_folder.iterdir()) == ["blue", "red"]  # nothing was created


def test_scan_ignores_graftkit_run_folders_and_says_so(class_folder, tmp_path):
    from PIL import Image

    def fake_run(folder: Path, *names: str) -> None:
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("{}")
        Image.new("RGB", (64, 64)).save(folder / "augmentations.png")

    fake_run(class_folder / "old-run", "model.json", "metrics.json", "config.json")
    fake_run(class_folder / "runs" / "20240101-fine-tune", "config.json", "history.jsonl")
    fake_run(class_folder / "red" / "nested-run", "model.json", "config.json")
    (class_folder / "subset").mkdir()
    (class_folder / "subset" / "subsample.json").write_text("{}")
    write_color_images(class_folder / "subset" / "train" / "red", (200, 0, 0), 2)
    scan = scan_data(class_folder)
    assert scan.classes == ["blue", "red"] and len(scan.train) + len(scan.val) == 20
    warning = next(w for w in scan.warnings if "written by graftkit" in w)
    assert "ignoring 4 folder(s)" in warning and "nested-run" in warning


# 19. lr-find and label-efficiency write new folders only; repeated sizes are measured once.

def test_lr_find_and_label_efficiency_refuse_a_folder_that_holds_a_run(split_folder, tmp_path):
    from graftkit.errors import GraftError

    from .conftest import invoke_graft

    fit(TrainConfig(data_dir=split_folder, out_dir=tmp_path / "run", **TINY))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(GraftError, match="already holds a run; lr-find writes a new folder"):
        invoke_graft("lr-find", str(split_folder), "--backbone", "tiny_cnn", "--image-size", "32",
                     "--device", "cpu", "--steps", "10", "--out", str(tmp_path / "run"))
    with pytest.raises(GraftError, match="already holds"):
        invoke_graft("label-efficiency", str(split_folder), "--backbone", "tiny_cnn", "--per-class", "2",
                     "--out", str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_label_efficiency_measures_a_repeated_size_once(split_folder, tmp_path):
    import json

    from graftkit.workflows.label_efficiency import label_efficiency

    from .conftest import invoke_graft

    cfg = TrainConfig(data_dir=split_folder, **TINY)
    with pytest.raises(ConfigError, match="repeat"):
        label_efficiency(cfg, [2, 2], 1, tmp_path / "api")
    assert not (tmp_path / "api").exists()
    result = invoke_graft("label-efficiency", str(split_folder), "--per-class", "2,2", "--seeds", "1",
                          "--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu", "--batch-size", "8",
                          "--head-epochs", "1", "--finetune-epochs", "1", "--out", str(tmp_path / "le"))
    assert result.exit_code == 0 and "measuring each once: 2" in result.output
    summary = json.loads((tmp_path / "le" / "label_efficiency.json").read_text())
    assert [s["label"] for s in summary["sizes"]] == ["2"]


def test_real_sigterm_to_graft_train_exits_143_with_a_resumable_checkpoint(class_folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from graftkit.engine.checkpoint import load_checkpoint

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "graftkit.cli", "train", str(class_folder), "--backbone", "tiny_cnn",
                             "--image-size", "32", "--strategy", "scratch", "--epochs", "5000", "--device", "cpu",
                             "--batch-size", "8", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into the epochs
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.count("\n") == 1 and "interrupted (SIGTERM)" in stderr and f"--resume {out}" in stderr
    assert load_checkpoint(out, ["blue", "red"])["epoch"] >= 0
