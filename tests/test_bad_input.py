"""Issue 14, items 4-13: bad input that used to crash, hang or read without limit (each test failed
before its fix)."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import os
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graftkit
from graftkit import CheckpointError, ConfigError, DataError, TrainConfig, fit, scan_data
from graftkit.data import DecodedImages, check_image
from graftkit.data.images import MAX_FILE_BYTES, resize_center_square

from .conftest import TINY, invoke_graft, write_color_images


def _dds_bytes() -> bytes:
    """192 bytes of DDS with an unknown pixel format: Pillow raises NotImplementedError."""
    header = struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44 + struct.pack("<2I", 32, 4) + b"XXXX"
    data = b"DDS " + header + b"\0" * 40
    return data + b"\0" * (192 - len(data))


def _dds_as_jpg(path: Path) -> Path:
    path.write_bytes(_dds_bytes())
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One trained tiny_cnn run shared by the tests that predict or edit run files (copied first)."""
    root = tmp_path_factory.mktemp("tiny-run")
    write_color_images(root / "data" / "red", (210, 40, 40), 6, seed=1)
    write_color_images(root / "data" / "blue", (40, 40, 210), 6, seed=2)
    run = fit(TrainConfig(data_dir=root / "data", out_dir=root / "run", cache_dir=root / "cache",
                          **TINY))  # fine-tune: 1 head + 1 fine-tune epoch
    return run.out_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


class _Timeout:
    """Fail instead of hanging forever (a FIFO read blocks until a writer comes)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self):
        def on_alarm(*_):
            raise TimeoutError(f"still blocked after {self.seconds}s")
        self.previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(self.seconds)

    def __exit__(self, *_):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


# ------------------------------------------------------------------ 4: any decoder failure

def test_any_decoder_exception_is_an_unreadable_image(class_folder, tiny_run):
    dds = _dds_as_jpg(class_folder / "red" / "texture.jpg")
    assert "NotImplementedError" in check_image(dds)
    with pytest.raises(DataError, match="texture.jpg"):  # check-data / train without --skip-bad-images
        scan_data(class_folder)
    decoded = DecodedImages(class_folder.parent / "cache", 37)  # train --skip-bad-images's checker
    scan = scan_data(class_folder, skip_bad_images=True, checker=decoded.check_and_fill)
    assert [b.path for b in scan.bad] == [dds] and "cannot decode" in scan.bad[0].reason
    skipped = []
    results = graftkit.load(tiny_run).predict([dds, class_folder / "red" / "000.png"],
                                              on_skip=lambda p, r: skipped.append((p, r)))
    assert [r.path.name for r in results] == ["000.png"] and skipped[0][0] == dds


# ------------------------------------------------------------------ 5: math text in labels

def test_plot_labels_are_literal_text_not_math(tmp_path):
    from graftkit.report import plots
    from graftkit.workflows.label_efficiency import plot_label_efficiency

    names = ["$\\nope$", "a_b^c$"]
    for png in (plots.confusion_png([[2, 1], [0, 3]], names, title="$\\nope$"),
                plots.run_curves_png([{"epoch": 1, "phase": "head", "val_accuracy": 0.5, "val_loss": 1.0,
                                       "train_accuracy": 0.5, "train_loss": 1.0, "elapsed": 1.0}], title=names[0]),
                plots.compare_curves_png({names[0]: [[{"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0,
                                                       "elapsed": 1.0}]]})):
        assert png.startswith(b"\x89PNG")
    summary = {"sizes": [{"mean_per_class": 2, "per_class": 2, "label": "2", "runs": [{"val_accuracy": 0.5}],
                          "val_accuracy": {"mean": 0.5, "half_width": None}}],
               "data_dir": str(tmp_path / "$\\nope$"), "strategy": "fine-tune", "backbone": "tiny_cnn", "seeds": 1}
    assert plot_label_efficiency(summary, tmp_path / "le.png").stat().st_size > 0


def test_report_of_a_run_with_math_text_class_names(tmp_path):
    from graftkit.report import write_report

    for name, rgb in (("$\\nope$", (210, 40, 40)), ("a_b^c$", (40, 40, 210))):
        write_color_images(tmp_path / "data" / name, rgb, 6)
    run = fit(TrainConfig(data_dir=tmp_path / "data", out_dir=tmp_path / "run", **TINY))
    html = write_report(run.out_dir, gradcam=0).read_text()
    assert "$\\nope$" in html and "data:image/png;base64," in html


# ------------------------------------------------------------------ 6: val/ without classes

def test_val_folder_of_loose_images_is_one_clear_error(tmp_path):
    root = tmp_path / "data"
    write_color_images(root / "train" / "red", (210, 40, 40), 4)
    write_color_images(root / "train" / "blue", (40, 40, 210), 4)
    write_color_images(root / "val", (200, 50, 50), 3)
    with pytest.raises(DataError, match=r"val' holds 3 images directly but no class folders.*<class>"):
        scan_data(root)


# ------------------------------------------------------------------ 7: unreadable --weights

def _truncated_torch_zip(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(64, 64)}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.mark.parametrize("kind", ["random", "text", "truncated-zip", "empty-zip"])
def test_unreadable_weights_file_is_a_checkpoint_error(tmp_path, kind):
    from graftkit.backbones.weights import read_state_dict

    path = tmp_path / "w.pth"
    if kind == "random":
        path.write_bytes(np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes())  # IndexError once
    elif kind == "text":
        path.write_text("these are not weights\n" * 20)
    elif kind == "truncated-zip":
        _truncated_torch_zip(path)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/other.txt", "x")
    with pytest.raises(CheckpointError, match="w.pth"):
        read_state_dict(path)


# ------------------------------------------------------------------ 8: config bounds

@pytest.mark.parametrize("change, flag", [
    ({"seed": 2**64}, "--seed"), ({"seed": -1}, "--seed"), ({"weight_decay": -1.0}, "--weight-decay"),
    ({"weight_decay": math.nan}, "--weight-decay"), ({"image_size": 100000}, "--image-size"),
    ({"cache_views": 1000000}, "--cache-views"), ({"mixup": math.nan}, "--mixup"), ({"cutmix": math.inf}, "--cutmix"),
    ({"lr": math.inf}, "--lr"), ({"epochs": "ten"}, "--epochs"), ({"checkpoint_every": -1.0}, "--checkpoint-every"),
])
def test_config_refuses_values_training_would_die_on(tmp_path, change, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(data_dir=tmp_path, **{**TINY, **change})


def test_top_k_zero_is_refused(tiny_run, class_folder):
    with pytest.raises(ConfigError, match="--top-k"):
        graftkit.load(tiny_run).predict(class_folder / "red" / "000.png", top_k=0)


# ------------------------------------------------------------------ 9: edited run files

def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field, edit", [
    ("preprocessing", lambda m: m.pop("preprocessing")),
    ("preprocessing.image_size", lambda m: m["preprocessing"].update(image_size="abc")),
    ("preprocessing.image_size", lambda m: m["preprocessing"].update(image_size=-5)),
    ("preprocessing.resize", lambda m: m["preprocessing"].update(resize=0)),
    ("split.val_fraction", lambda m: m["split"].update(val_fraction="x")),
    ("classes", lambda m: m.update(classes="xy")),
    ("precision", lambda m: m.update(precision="fp8")),
    ("head.dropout", lambda m: m["head"].update(dropout="0.2")),
])
def test_edited_model_json_names_the_field(run_copy, field, edit):
    _edit_json(run_copy / "model.json", edit)
    with pytest.raises(CheckpointError, match=rf"model.json.*'{re.escape(field)}"):
        graftkit.load(run_copy)


def test_resume_with_wrong_types_in_config_json_names_file_and_field(run_copy):
    (run_copy / "metrics.json").unlink()  # an interrupted run, as far as --resume can tell
    _edit_json(run_copy / "config.json", lambda c: c.update(epochs="ten"))
    with pytest.raises(ConfigError, match=r"config.json.*--epochs"):
        TrainConfig.from_run(run_copy, resume=True)
    (run_copy / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json.*JSON object"):
        TrainConfig.from_run(run_copy, resume=True)


def test_checkpoint_without_its_fields_is_refused(run_copy):
    from graftkit.engine.checkpoint import load_checkpoint

    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, run_copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checkpoint.pt.*'optimizer'"):
        load_checkpoint(run_copy, state["classes"])


def _break_predictions(path: Path, column: str, value: str) -> None:
    rows = list(csv.DictReader(path.open()))
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("name, damage, needle", [
    ("metrics.json", lambda p: _edit_json(p, lambda m: m.update(val_accuracy="x")), "'val_accuracy'"),
    ("metrics.json", lambda p: _edit_json(p, lambda m: m.update(phases=[{"name": 1}])), "'phases'"),
    ("history.jsonl", lambda p: p.write_text(p.read_text() + "{not json\n"), "line 3"),
    ("history.jsonl", lambda p: p.write_text('{"epoch": "one", "phase": "head", "val_accuracy": 1}\n'), "'epoch'"),
    ("predictions.csv", lambda p: _break_predictions(p, "confidence", "abc"), "'confidence'"),
    ("predictions.csv", lambda p: p.write_text("path,label\na.png,red\n"), "'predicted'"),
    ("config.json", lambda p: p.write_text('"text"'), "JSON object"),
])
def test_report_names_the_malformed_run_file(run_copy, name, damage, needle):
    from graftkit.report.runfiles import load_run

    damage(run_copy / name)
    with pytest.raises(ConfigError, match=rf"{name}.*{needle}"):
        load_run(run_copy)


# ------------------------------------------------------------------ 10: augment-preview, pipeline files

def test_augment_preview_skips_unreadable_images(class_folder, tmp_path):
    for i in range(10):
        (class_folder / "red" / f"{i:03d}.png").write_text("not a picture")  # all red ones bad but one
    write_color_images(class_folder / "red" / "ok", (210, 40, 40), 1)
    out = tmp_path / "grid.png"
    result = invoke_graft("augment-preview", str(class_folder), "--augment", "light", "--image-size", "32",
                          "--num-images", "2", "--num-views", "2", "--out", str(out))
    assert result.exit_code == 0 and out.is_file()
    assert "skipped:" in result.stderr and "000.png" in result.stderr


@pytest.mark.parametrize("out", ["grid.txt", "folder"])
def test_augment_preview_checks_out_before_any_work(tmp_path, out):
    from graftkit.cli_scarce import augment_preview

    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="--out"):  # the data folder does not even exist: not reached
        augment_preview(tmp_path / "missing", augment="light", out=tmp_path / out, image_size=32,
                        backbone="tiny_cnn", num_images=2, num_views=2, mixup=0.0, cutmix=0.0, seed=0)


@pytest.mark.parametrize("entry, needle", [
    ({"name": "RandomCrop", "size": 500}, "fails on a 37x37"), ({"name": "ToPILImage"}, "ToPILImage"),
])
def test_pipeline_file_that_cannot_run_fails_when_loaded(class_folder, tmp_path, entry, needle):
    path = tmp_path / "aug.json"
    path.write_text(json.dumps({"transforms": [entry]}))
    rng_before = torch.get_rng_state()
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(data_dir=class_folder, augment=str(path), **TINY)
    assert torch.equal(rng_before, torch.get_rng_state())  # the trial run leaves the global RNG alone


# ------------------------------------------------------------------ 11: only regular files, size-capped

def test_predict_skips_fifos_devices_and_huge_files_without_blocking(tiny_run, class_folder, tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    os.mkfifo(class_folder / "blue" / "pipe.png")  # inside a folder too
    skipped = {}
    with _Timeout(60):
        results = graftkit.load(tiny_run).predict([fifo, Path("/dev/zero"), huge, class_folder / "red" / "000.png",
                                                   class_folder / "blue"],
                                                  on_skip=lambda p, r: skipped.__setitem__(Path(p).name, r))
    assert [r.path.name for r in results] == ["000.png"] + [f"{i:03d}.png" for i in range(10)]
    assert "not a regular file" in skipped["fifo.jpg"] and "not a regular file" in skipped["zero"]
    assert "not a regular file" in skipped["pipe.png"]
    assert "too large" in skipped["huge.jpg"]


def test_scan_lists_fifos_devices_and_huge_files_with_a_reason(class_folder):
    os.mkfifo(class_folder / "red" / "fifo.jpg")
    (class_folder / "red" / "zero.jpg").symlink_to("/dev/zero")
    with (class_folder / "blue" / "huge.png").open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with _Timeout(60):
        decoded = DecodedImages(class_folder.parent / "cache", 37)
        scan = scan_data(class_folder, skip_bad_images=True, checker=decoded.check_and_fill)
    reasons = {b.path.name: b.reason for b in [*scan.bad, *scan.ignored]}
    assert "not a regular file" in reasons["fifo.jpg"] and "not a regular file" in reasons["zero.jpg"]
    assert "too large" in reasons["huge.png"] and "too large" in check_image(class_folder / "blue" / "huge.png")


# ------------------------------------------------------------------ 12: thin strips

def test_thin_strips_are_refused_before_decoding(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 6000), (5, 5, 5)).save(strip)  # ~100 bytes: passes the pixel-count guard
    assert "too elongated" in check_image(strip)


def test_resizing_an_elongated_image_never_builds_the_long_side(monkeypatch):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 50, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((64, 3840), Image.BILINEAR).crop((0, 1888, 64, 1952)), dtype=int)
    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or real(self, size, *a, **k))
    out = resize_center_square(img, 64)
    assert out.size == (64, 64) and max(w * h for w, h in sizes) <= 4 * 64 * 64
    assert np.abs(np.asarray(out, dtype=int) - expected).max() <= 1  # as resize-then-crop


# ------------------------------------------------------------------ 13: predict progress

@pytest.mark.parametrize("terminal", [True, False])
def test_predict_progress_goes_to_a_terminal_stderr_only(tiny_run, class_folder, monkeypatch, terminal):
    from graftkit import cli_predict

    monkeypatch.setattr(cli_predict, "stderr_is_terminal", lambda: terminal)
    result = invoke_graft("predict", str(tiny_run), str(class_folder), "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert len(rows) == 21 and "predicting" not in result.stdout  # piped output stays clean CSV
    assert ("predicting" in result.stderr) == terminal


# ------------------------------------------------------------------ fuzz: mutated images, one process

FUZZ_SCRIPT = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))  # bounded memory: a bomb fails here
from graftkit.cli import main
codes = []
for args in (["check-data", {data!r}, "--skip-bad-images"], ["predict", {run!r}, {data!r}, "--format", "csv"]):
    sys.argv = ["graft", *args]
    try:
        main()
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 1)
peak = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmPeak", "VmHWM"))]
print("FUZZ-CODES " + json.dumps(codes), "peak kB (virtual, resident):", *peak, file=sys.stderr)
"""
FUZZ_AS_LIMIT = 5 * 2**30  # torch reserves ~3 GiB of address space at import; decoding stays well below


def _fuzz_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    seeds = {}
    for fmt, ext, options in (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 80}), ("GIF", "gif", {}),
                              ("TIFF", "tif", {"compression": "tiff_deflate"}), ("WEBP", "webp", {"quality": 60})):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **options)
        seeds[ext] = buffer.getvalue()
    seeds["dds.jpg"] = _dds_bytes()  # a texture named .jpg
    return seeds


def _png_strip() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 6000), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-6 byte-level edits: flips, 0x00/0xFF runs, big 32-bit values (sizes), cuts, inserts,
    truncation; half of the mutants keep their first 8 bytes (the format's magic) so a decoder runs."""
    out = bytearray(data)
    keep_magic = rng.random() < 0.5
    for _ in range(int(rng.integers(1, 7))):
        out = out or bytearray(b"\0")
        kind, at = int(rng.integers(0, 6)), int(rng.integers(0, len(out)))
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at:at + int(rng.integers(1, 9))] = bytes([0xFF if rng.random() < 0.5 else 0x00]) * int(rng.integers(1, 9))
        elif kind == 2:  # a width/height/length field: small, large or huge
            out[at:at + 4] = struct.pack(">I", int(rng.choice([0, 1, 7, 65535, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF])))
        elif kind == 3:
            del out[at:at + int(rng.integers(1, 64))]
        elif kind == 4:
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        else:
            out = out[:max(1, at)]
    if keep_magic:
        out[:8] = data[:8]
    return bytes(out)


def test_fuzz_mutated_images_never_crash_hang_or_blow_memory(tiny_run, tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(14)
    data = tmp_path / "fuzz"
    count = 0
    for ext, seed in _fuzz_seeds().items():
        for i in range(50):
            folder = data / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{ext}-{i:02d}.{ext}").write_bytes(_mutate(seed, rng))
            count += 1
        for cls in "ab":  # one intact file per format and class: the folder stays a dataset
            (data / cls / f"{ext}-ok.{ext}").write_bytes(seed)
    assert count == 300
    (data / "a" / "strip.png").write_bytes(_png_strip())  # 1x6000: refused, not decoded
    script = FUZZ_SCRIPT.format(limit=FUZZ_AS_LIMIT, data=str(data), run=str(tiny_run))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-3000:]
    codes = json.loads(result.stderr.split("FUZZ-CODES ")[-1].split(" peak")[0])
    assert result.returncode == 0 and codes[0] == 0 and codes[1] in (0, 2), result.stderr[-3000:]
    assert "ok" in result.stdout or "usable with --skip-bad-images" in result.stdout
    assert result.stdout.count("\n") > 10  # predict printed rows for the images that decode
