"""Bad input of every kind, interrupted runs, untrusted files (issue: reliability and security)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graftkit
from graftkit import CheckpointError, ConfigError, DataError, TrainConfig, fit, scan_data
import importlib

fit_module = importlib.import_module("graftkit.engine.fit")

from .conftest import TINY, graft, write_color_images


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels (no pixel data): a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def _per_file_cases(root: Path) -> dict[str, Path]:
    """Every per-file bad input, in one class folder; returns name → path."""
    folder = root / "cats"
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(jpeg, "JPEG")
    cases = {
        "truncated": folder / "truncated.jpg", "zero": folder / "zero.jpg", "text": folder / "text.jpg",
        "html": folder / "page.jpg", "bomb": folder / "bomb.png",
    }
    cases["truncated"].write_bytes(jpeg.getvalue()[:200])
    cases["zero"].write_bytes(b"")
    cases["text"].write_text("hello, not a picture")
    cases["html"].write_text("<!DOCTYPE html><html><body>404</body></html>")
    _png_header_only(cases["bomb"], 30000, 30000)
    return cases


def _good_odd_images(folder: Path) -> list[Path]:
    """Odd but valid images that must load: 16-bit, CMYK, palette+alpha, grey, EXIF, 1x1, GIF, WebP."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    Image.fromarray(np.full((16, 16), 30000, np.uint16)).save(folder / "deep16.png"); made.append("deep16.png")
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(folder / "cmyk.jpg"); made.append("cmyk.jpg")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(folder / "palette.png", transparency=0); made.append("palette.png")
    Image.new("L", (16, 16), 90).save(folder / "grey.png"); made.append("grey.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (20, 10), (1, 2, 3)).save(folder / "rotated.jpg", exif=exif); made.append("rotated.jpg")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one pixel ünïcode.png"); made.append("one pixel ünïcode.png")
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:]); made.append("anim.gif")
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:]); made.append("anim.webp")
    return [folder / name for name in made]


def test_check_data_lists_every_per_file_problem_once(tmp_path):
    root = tmp_path / "data"
    cases = _per_file_cases(root)
    odd = _good_odd_images(root / "dogs")
    write_color_images(root / "cats", (200, 0, 0), 3)
    (root / "dogs" / "loop").symlink_to(root / "dogs" / "loop")  # a symlink loop
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    result = graft("check-data", str(root))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for path in cases.values():
        assert str(path) in result.stderr
    assert "--skip-bad-images" in result.stderr
    assert "too many pixels" in result.stderr and "truncated" in result.stderr
    ok = graft("check-data", str(root), "--skip-bad-images")
    assert ok.returncode == 0 and "Traceback" not in ok.stderr
    skipped = [line for line in ok.stdout.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == len(cases) + 1  # + the symlink loop, each once
    assert any("symlink loop" in line for line in skipped)
    scan = scan_data(root, skip_bad_images=True, val_fraction=0.2)
    used = {s.path for s in [*scan.train, *scan.val]}
    assert set(odd) <= used  # the odd-but-valid images are all kept


def test_permission_denied_file_is_reported(class_folder, monkeypatch):
    denied = class_folder / "red" / "000.png"
    from graftkit.data import decoded as decoded_module
    real = decoded_module.read_image_file

    def read_image_file(path):  # tests run as root, where chmod 000 denies nothing
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(decoded_module, "read_image_file", read_image_file)
    from graftkit.data import DecodedImages

    decoded = DecodedImages(class_folder.parent / "cache", 36)
    with pytest.raises(DataError, match="permission denied"):
        scan_data(class_folder, checker=decoded.check_and_fill)


def test_duplicates_across_train_and_val_are_listed(split_folder, tmp_path):
    (split_folder / "val" / "red" / "copy.png").write_bytes((split_folder / "train" / "red" / "000.png").read_bytes())
    run = fit(TrainConfig(data_dir=split_folder, out_dir=tmp_path / "r", **TINY))
    listed = (tmp_path / "r" / "duplicates.txt").read_text()
    assert "copy.png" in listed and run.metrics["num_duplicates"] == 1


def test_unwritable_output_folder_is_a_clear_error(class_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to output folder"):
        fit(TrainConfig(data_dir=class_folder, out_dir=blocker / "run", **TINY))


def test_full_disk_while_checkpointing_keeps_the_previous_files(class_folder, tmp_path, monkeypatch):
    import graftkit.fileio as fileio

    real_fsync = os.fsync

    def fsync(fd):
        if (tmp_path / "r" / "model.json").exists():  # the disk fills once the first model is whole
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    with pytest.raises(CheckpointError, match="No space left on device.*--resume"):
        fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", checkpoint_every=0,
                        **{**TINY, "strategy": "scratch", "epochs": 4}))
    assert not list((tmp_path / "r").glob(".*.tmp"))  # no half-written temp files left behind
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    graftkit.load(tmp_path / "r")  # the model written before the disk filled up still loads


def test_nan_loss_with_no_good_epoch_is_a_clear_error(class_folder, tmp_path):
    from graftkit.engine.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", lr=1e6, strategy="scratch",
                        **{**TINY, "epochs": 2}))


def test_divergence_stops_the_phase_and_keeps_the_best(class_folder, tmp_path):
    run = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "r", finetune_lr=1e6,
                          **{**TINY, "epochs": None, "head_epochs": 2, "finetune_epochs": 2}))
    assert run.metrics["diverged"] and run.metrics["diverged"][0]["phase"] == "finetune"
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values() if v.is_floating_point())
    assert run.metrics["best_phase"] == "head"


def _crash_at(monkeypatch, crash_epoch: int) -> None:
    real = fit_module._train_epoch

    def train_epoch(*args, **kwargs):
        if args[5] == crash_epoch:  # the global epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_train_epoch", train_epoch)


# mid head phase, at the phase change, mid fine-tune (also with --ema: its average is in the checkpoint)
@pytest.mark.parametrize("crash_epoch, ema", [(1, False), (2, False), (3, False), (3, True)])
def test_resume_after_interruption_matches_an_uninterrupted_run(split_folder, tmp_path, monkeypatch,
                                                                crash_epoch, ema):
    options = dict(data_dir=split_folder, strategy="fine-tune", checkpoint_every=0, precision="fp32", ema=ema,
                   **{**TINY, "epochs": None, "head_epochs": 2, "finetune_epochs": 2})
    whole = fit(TrainConfig(out_dir=tmp_path / "whole", **options))
    with monkeypatch.context() as patch:
        _crash_at(patch, crash_epoch)
        with pytest.raises(fit_module.Interrupted, match="--resume"):
            fit(TrainConfig(out_dir=tmp_path / "cut", **options))
    resumed = fit(TrainConfig.from_run(tmp_path / "cut", resume=True))
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_resume_with_other_classes_is_refused(split_folder, tmp_path, monkeypatch):
    options = dict(strategy="scratch", checkpoint_every=0, **{**TINY, "epochs": 3})
    with monkeypatch.context() as patch:
        _crash_at(patch, 2)
        with pytest.raises(fit_module.Interrupted):
            fit(TrainConfig(data_dir=split_folder, out_dir=tmp_path / "cut", **options))
    write_color_images(split_folder / "train" / "zebra", (9, 9, 9), 3)
    with pytest.raises(CheckpointError, match="only in data: zebra"):
        fit(TrainConfig.from_run(tmp_path / "cut", resume=True))


def test_malicious_pickle_is_refused_without_running_it(class_folder, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    evil.write_bytes(pickle.dumps({"weight": Payload()}))
    result = graft("train", str(class_folder), "--backbone", "tiny_cnn", "--image-size", "32",
                   "--weights", str(evil), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(evil) in result.stderr and "never unpickles" in result.stderr
    assert not marker.exists()


def test_damaged_model_json_is_a_clear_error(split_folder, tmp_path):
    run = fit(TrainConfig(data_dir=split_folder, out_dir=tmp_path / "r", **TINY))
    (run.out_dir / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged"):
        graftkit.load(run.out_dir)
