"""Likely label errors: out-of-sample probes + cleanlab find flipped labels; check-data and train write them."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from graftkit import TrainConfig
from graftkit.engine import label_issues
from graftkit.engine.label_issues import (INSTALL_HINT, check_run_label_issues, find_label_issues,
                                          out_of_sample_probabilities, rank_label_issues)

from .conftest import TINY, graft, tiny_flags, write_color_images

COLOURS = {"red": (210, 40, 40), "green": (40, 210, 40), "blue": (40, 40, 210)}


@pytest.fixture
def flipped_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    """train/ + val/ of three colour classes, with two training images moved into the wrong class."""
    root = tmp_path / "flipped"
    for i, (name, rgb) in enumerate(COLOURS.items()):
        write_color_images(root / "train" / name, rgb, 12, seed=i)
        write_color_images(root / "val" / name, rgb, 4, seed=10 + i)
    flipped = []
    for source, target in (("red", "blue"), ("green", "red")):
        moved = root / "train" / target / f"was-{source}.png"
        (root / "train" / source / "000.png").rename(moved)
        flipped.append(moved)
    return root, flipped


def _no_cleanlab(monkeypatch) -> None:
    for name in ("cleanlab", "cleanlab.filter", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)  # `import cleanlab...` now raises ImportError


def test_out_of_sample_probes_and_cleanlab_rank_the_flipped_points_first():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = 0.5 * rng.normal(size=(120, 16)) + 8.0 * np.eye(3, 16)[labels]
    given = labels.copy()
    given[[5, 50, 100]] = [1, 2, 0]
    probs = out_of_sample_probabilities(features, given, 3)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == labels).mean() > 0.95  # the probes learn the clusters, not the flips
    ranked, quality = rank_label_issues(given, probs)
    assert set(ranked) == {5, 50, 100}  # flagged: the flips and nothing else
    assert list(quality[ranked]) == sorted(quality[ranked])  # lowest quality first


def test_a_class_with_one_image_is_refused_with_a_reason():
    from graftkit.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 2 images per class"):
        out_of_sample_probabilities(np.zeros((5, 2)), np.array([0, 0, 0, 0, 1]), 2)


def test_find_label_issues_finds_the_flipped_images(flipped_folder, tmp_path):
    root, flipped = flipped_folder
    cfg = TrainConfig(data_dir=root, cache_dir=tmp_path / "cache", **TINY)
    result = find_label_issues(cfg)
    assert result.num_checked == 36 + 12 and result.features_computed == 48
    top = {issue.path for issue in result.issues[:2]}
    assert top == set(flipped)
    by_path = {issue.path: issue for issue in result.issues}
    assert by_path[flipped[0]].given_label == "blue" and by_path[flipped[0]].suggested_label == "red"
    assert by_path[flipped[1]].split == "train" and by_path[flipped[1]].suggested_label == "green"
    again = find_label_issues(cfg)  # the features are cached now
    assert again.features_computed == 0 and [i.path for i in again.issues] == [i.path for i in result.issues]


def test_check_data_label_issues_writes_the_csv_outside_the_data(flipped_folder, tmp_path):
    root, flipped = flipped_folder
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = tmp_path / "issues"
    result = graft("check-data", str(root), "--label-issues", "--top", "5", "--out", str(out),
                   "--backbone", "tiny_cnn", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    assert {Path(r["path"]) for r in rows[:2]} == set(flipped)
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert set(rows[0]) == {"rank", "path", "split", "given_label", "suggested_label", "label_quality"}
    assert "was-red.png" in result.stdout and "blue → red" in result.stdout
    assert f"→ {out / 'label_issues.csv'}" in result.stdout
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the data
    inside = graft("check-data", str(root), "--label-issues", "--out", str(root / "issues"), "--backbone", "tiny_cnn")
    assert inside.returncode == 2 and "inside DATA_DIR" in inside.stderr


def test_label_issue_options_without_label_issues_are_refused(class_folder, tmp_path):
    result = graft("check-data", str(class_folder), "--top", "5", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "--top, --out only apply with --label-issues" in result.stderr


def test_without_cleanlab_check_data_says_what_to_install(class_folder, tmp_path, monkeypatch):
    _no_cleanlab(monkeypatch)
    result = graft("check-data", str(class_folder), "--label-issues", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert INSTALL_HINT in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_without_cleanlab_training_still_works_and_says_what_to_install(class_folder, tmp_path, monkeypatch):
    _no_cleanlab(monkeypatch)
    args = tiny_flags("feature-extraction")
    result = graft("train", str(class_folder), "--strategy", "feature-extraction", "--out", str(tmp_path / "run"),
                   "--plain", *args)
    assert result.returncode == 0, result.stderr
    assert f"label issues: not checked; finding label issues needs cleanlab: {INSTALL_HINT}" in result.stdout
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / "label_issues.csv").exists()


def test_training_writes_label_issues_from_the_features_it_cached(flipped_folder, tmp_path, monkeypatch):
    from graftkit.workflows.freeze_auto import train_run

    root, flipped = flipped_folder
    cfg = TrainConfig(data_dir=root, strategy="feature-extraction", out_dir=tmp_path / "run",
                      cache_dir=tmp_path / "cache", **TINY)
    run = train_run(cfg)
    rows = list(csv.DictReader((run.out_dir / "label_issues.csv").open()))
    assert {Path(r["path"]) for r in rows[:2]} == set(flipped)
    line = check_run_label_issues(cfg, tmp_path / "again")  # cached: no feature row computed
    assert line.startswith("label issues: ") and "computed" not in line
    scratch = cfg.replace(strategy="scratch", out_dir=tmp_path / "scratch")
    assert "not checked (this run has no pretrained features)" in check_run_label_issues(scratch, tmp_path)
    assert "--label-issues" in check_run_label_issues(scratch, tmp_path)
    other_cache = cfg.replace(cache_dir=tmp_path / "empty-cache")
    assert "did not cache the pooled features" in check_run_label_issues(other_cache, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr(label_issues, "MAX_AUTO_WORK", 48 * 3 - 1)  # 48 images x 3 classes: one too many
    assert "not checked after training (48 images x 3 classes" in check_run_label_issues(cfg, run.out_dir)
