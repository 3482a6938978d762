"""Run files can be shared: written atomically, with the mode any new file gets under the umask."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from graftkit.fileio import atomic_write_bytes

from .conftest import TINY


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "sub" / "file.json"
    atomic_write_bytes(path, b"{}")
    atomic_write_bytes(path, b"{\"again\": 1}")  # replacing keeps the mode, leaves no temp file
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_umask_mode(class_folder, tmp_path, umask, mask, mode):
    from graftkit import fit
    from graftkit.config import TrainConfig
    from graftkit.report import write_report

    umask(mask)
    run = fit(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "run", strategy="feature-extraction",
                          **{**TINY, "epochs": 1}))
    write_report(run.out_dir, gradcam=0)
    modes = _modes(run.out_dir)
    for name in ("model.safetensors", "model.json", "metrics.json", "config.json", "history.jsonl",
                 "predictions.csv", "report.html", "augmentations.jpg"):
        assert name in modes, sorted(modes)
    assert modes == dict.fromkeys(modes, mode), {k: oct(v) for k, v in modes.items()}


def test_augmentation_grid_is_a_small_jpeg(split_folder, tmp_path):
    """The preview grid of a run is a JPEG (quality 85): at 224 px the PNG it replaced was ~4 MB."""
    import numpy as np
    from PIL import Image

    from graftkit.data.preview import save_augment_grid

    rng = np.random.default_rng(0)
    squares = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(8)]  # noise: worst case
    jpeg = save_augment_grid(tmp_path / "augmentations.jpg", squares, 224, "light")
    png = save_augment_grid(tmp_path / "grid.png", squares, 224, "light")
    assert Image.open(jpeg).format == "JPEG" and Image.open(png).format == "PNG"
    assert jpeg.stat().st_size < png.stat().st_size / 2
