from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def write_color_images(folder: Path, rgb: tuple[int, int, int], count: int, size: int = 32,
                       seed: int = 0, fmt: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-25, 25, size=(size, size, 3))
        pixels = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{fmt}")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own cache folder (never the user's ~/.cache/graftkit)."""
    cache_home = tmp_path_factory.mktemp("cache-home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    # thread counts that follow the machine's load would make runs differ in their last bits (the
    # resume and reproducibility tests compare exactly): fixed, except where a test unsets it
    monkeypatch.setenv("GRAFTKIT_THREADS", "fixed")
    return cache_home / "graftkit"


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Two learnable classes (red, blue) x 10 images of 32 px, class folders directly."""
    root = tmp_path / "data"
    write_color_images(root / "red", (210, 40, 40), 10, seed=1)
    write_color_images(root / "blue", (40, 40, 210), 10, seed=2)
    return root


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """train/ + val/ with three colour classes."""
    return _split_colours(tmp_path / "splits")


def _split_colours(root: Path) -> Path:
    for i, (name, rgb) in enumerate({"red": (210, 40, 40), "green": (40, 210, 40),
                                     "blue": (40, 40, 210)}.items()):
        write_color_images(root / "train" / name, rgb, 8, seed=i)
        write_color_images(root / "val" / name, rgb, 3, seed=10 + i)
    return root


@pytest.fixture(scope="session")
def session_run(tmp_path_factory) -> Path:
    """One finished fine-tune run (tiny_cnn, split_folder-like data), trained once per test session
    for the tests that only read it (reports, loading, predicting). Do not change its data."""
    from graftkit import TrainConfig, fit

    root = tmp_path_factory.mktemp("session-run")
    data = _split_colours(root / "splits")
    cfg = TrainConfig(data_dir=data, strategy="fine-tune", out_dir=root / "run", lr=1e-2,
                      cache_dir=root / "cache", **{**TINY, "epochs": None, "head_epochs": 2, "finetune_epochs": 1})
    return fit(cfg).out_dir


TINY = dict(backbone="tiny_cnn", image_size=32, epochs=2, head_epochs=1, finetune_epochs=1,
            batch_size=8, device="cpu", progress="none", num_workers=0)


def tiny_flags(strategy: str = "fine-tune") -> list[str]:
    """TINY as `graft train` flags for ``strategy`` (the phase epochs only where that strategy uses them)."""
    skip = {"progress"} | ({"epochs"} if strategy == "fine-tune" else {"head_epochs", "finetune_epochs"})
    return [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k not in skip]


def graft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``graft ARGS`` in this process through the console entry point (``graftkit.cli.main``):
    exit code, stdout and stderr as a user sees them, without paying a new interpreter importing
    torch (8-14 s on 2 loaded cores). Use :func:`run_graft` where the process itself is the point."""
    import contextlib
    import io

    from graftkit import cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = ["graft", *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["graft", *args], code, out.getvalue(), err.getvalue())


def run_graft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "graftkit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def invoke_graft(*args: str):
    """Run a ``graft`` command in this process (faster than ``run_graft``; for commands that succeed)."""
    from typer.testing import CliRunner

    from graftkit.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)
