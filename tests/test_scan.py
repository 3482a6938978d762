from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftkit import DataError, scan_data
from graftkit.data import load_image

from .conftest import write_color_images


def test_class_folders_get_a_seeded_stratified_split(class_folder):
    scan = scan_data(class_folder, val_fraction=0.2, seed=0)
    assert scan.layout == "classes" and scan.classes == ["blue", "red"]
    assert scan.class_counts("val") == {"blue": 2, "red": 2}
    assert scan.class_counts("train") == {"blue": 8, "red": 8}
    again = scan_data(class_folder, val_fraction=0.2, seed=0)
    assert [s.path for s in again.val] == [s.path for s in scan.val]
    other = scan_data(class_folder, val_fraction=0.2, seed=1)
    assert {s.path for s in other.val} != {s.path for s in scan.val}
    assert not {s.path for s in scan.val} & {s.path for s in scan.train}


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_folders_are_used_as_given(tmp_path, val_name):
    write_color_images(tmp_path / "train" / "a", (200, 0, 0), 3)
    write_color_images(tmp_path / "train" / "b", (0, 0, 200), 3)
    write_color_images(tmp_path / val_name / "a", (200, 0, 0), 2)
    write_color_images(tmp_path / val_name / "b", (0, 0, 200), 1)
    scan = scan_data(tmp_path)
    assert scan.layout == "splits"
    assert (len(scan.train), len(scan.val)) == (6, 3)


def test_hidden_files_and_folders_are_ignored_silently(class_folder):
    (class_folder / ".git").mkdir()
    (class_folder / ".git" / "HEAD").write_text("ref")
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0\1")
    scan = scan_data(class_folder)
    assert scan.classes == ["blue", "red"] and not scan.ignored and not scan.bad


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        scan_data(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_class_folders(tmp_path):
    assert "no class folders" in _error(tmp_path)


def test_missing_folder(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_single_class(tmp_path):
    write_color_images(tmp_path / "only", (1, 2, 3), 3)
    message = _error(tmp_path)
    assert "'only'" in message and "at least 2" in message


def test_empty_class_folder_is_named(class_folder):
    (class_folder / "green").mkdir()
    (class_folder / "green" / "notes.txt").write_text("hi")
    message = _error(class_folder)
    assert str(class_folder / "green") in message and "notes.txt" in message and "delete the folder" in message


def test_val_class_missing_from_train(split_folder):
    write_color_images(split_folder / "val" / "zebra", (9, 9, 9), 1)
    message = _error(split_folder)
    assert "zebra" in message and "not in train" in message


def test_split_root_passed_as_class_root(tmp_path):
    for split in ("training_set", "test_set"):
        write_color_images(tmp_path / split / "cat", (1, 1, 1), 1)
        write_color_images(tmp_path / split / "dog", (2, 2, 2), 1)
    message = _error(tmp_path)
    assert "look like splits" in message and "train/ and val/" in message


def _bad_files(folder: Path) -> dict[str, Path]:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 30)).save(good, "JPEG")
    files = {"truncated": folder / "cut.jpg", "text": folder / "x.jpg", "empty": folder / "zero.png"}
    files["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["text"].write_text("this is not an image")
    files["empty"].write_bytes(b"")
    return files


def test_bad_images_fail_with_a_list_and_the_flag(class_folder):
    bad = _bad_files(class_folder / "red")
    message = _error(class_folder)
    for path in bad.values():
        assert str(path) in message
    assert "--skip-bad-images" in message
    scan = scan_data(class_folder, skip_bad_images=True)
    assert {b.path for b in scan.bad} == set(bad.values())
    assert all(s.path not in bad.values() for s in [*scan.train, *scan.val])
    reasons = {b.path: b.reason for b in scan.bad}
    assert reasons[bad["truncated"]] == "truncated" and "empty" in reasons[bad["empty"]]


def test_every_file_unreadable(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "1.jpg").write_text("nope")
    assert "none of the 2 images" in _error(tmp_path, skip_bad_images=True)


def test_non_image_names_are_ignored_and_reported(class_folder):
    (class_folder / "red" / "readme.txt").write_text("about")
    scan = scan_data(class_folder)
    assert [b.path.name for b in scan.ignored] == ["readme.txt"]
    assert any("not images by name" in w for w in scan.warnings)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    else:
        img = Image.new("RGB", (8, 8), (10, 200, 30)).convert(mode)
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":  # 40000/65535 of full scale, not clipped to white
        assert 150 < np.asarray(out)[0, 0, 0] < 160


def test_palette_transparency_is_flattened_on_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    img.save(tmp_path / "t.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)
