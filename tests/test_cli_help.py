"""Help that reads: options in panels, every default shown, value names instead of type tags, and
docs/cli-help.txt kept current (scripts/cli_help.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import graft

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wide(monkeypatch):
    """Help rendered on a wide, colourless terminal, so lines do not wrap."""
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")


def test_train_help_groups_options_and_shows_every_default(wide):
    text = graft("train", "--help").stdout
    panels = [p for p in ("Data", "Model", "Schedule", "Augmentation", "Speed", "Output", "Scarce labels")
              if f"╭─ {p} " in text]
    assert len(panels) == 7, panels
    assert "<bool>" not in text and "<str>" not in text and "<int>" not in text and "list[" not in text
    assert "[default: (32 on a CPU (16 for a head on cached features), 64 on CUDA)]" in text
    assert "[default: (10; fine-tune: 6 = 2 head + 4)]" in text and "[default: (the backbone's, e.g. 224)]" in text
    assert "train [OPTIONS] [DATA_DIR]" in text


def test_predict_help_names_its_arguments(wide):
    text = graft("predict", "--help").stdout
    assert "predict [OPTIONS] MODEL PATHS..." in text and "{" not in text.splitlines()[1]
    assert "<path>" not in text and "list[Path]" not in text and "<bool>" not in text
    assert "--device" in text and "[default: auto]" in text


def test_docs_cli_help_is_current():
    """docs/cli-help.txt is what `graft --help`, `graft train --help` and `graft predict --help` print."""
    check = subprocess.run([sys.executable, "scripts/cli_help.py", "--check"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    if "rendered with other versions" in check.stdout:
        pytest.skip(check.stdout.splitlines()[0])  # another typer/rich lays out boxes differently
    assert check.returncode == 0, (check.stdout + check.stderr + "\nRegenerate docs/cli-help.txt with: "
                                   "python scripts/cli_help.py")
