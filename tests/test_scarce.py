from __future__ import annotations

import json
import os

import pytest

from graftkit import ConfigError, TrainConfig
from graftkit.data import scan_data
from graftkit.scarce import parse_per_class, subsample
from graftkit.workflows.label_efficiency import label_efficiency, mean_interval

from .conftest import TINY, graft, invoke_graft


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_subsample_layout_links_and_seeds(split_folder, tmp_path):
    result = subsample(split_folder, 3, tmp_path / "s0", seed=0)
    out = tmp_path / "s0"
    assert result.train_counts == {"blue": 3, "green": 3, "red": 3}
    assert result.val_counts == {"blue": 3, "green": 3, "red": 3}  # the original val split, whole
    assert sum(result.unlabeled_counts.values()) == 3 * 5
    unlabeled = _files(out / "unlabeled")
    assert len(unlabeled) == 15 and all(p.parent == out / "unlabeled" for p in unlabeled)  # flat: no class
    for p in [*_files(out / "train"), *_files(out / "val"), *unlabeled]:
        assert p.is_symlink() and p.resolve().is_relative_to(split_folder.resolve())
    # labelled and unlabelled are disjoint and together make the original train split
    labelled = {p.resolve() for p in _files(out / "train")}
    assert labelled.isdisjoint({p.resolve() for p in unlabeled})
    assert labelled | {p.resolve() for p in unlabeled} == {p.resolve() for p in _files(split_folder / "train")}
    assert json.loads((out / "subsample.json").read_text())["link_method"] == "symlink"
    assert len((out / "unlabeled_truth.csv").read_text().splitlines()) == 16
    # graftkit trains on it as is (unlabeled/ is not a split)
    scan = scan_data(out)
    assert len(scan.train) == 9 and len(scan.val) == 9
    # same seed, same pick; another seed, another pick
    again = subsample(split_folder, 3, tmp_path / "again", seed=0)
    other = subsample(split_folder, 3, tmp_path / "other", seed=1)
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in _files(d / "train"))  # noqa: E731
    assert names(tmp_path / "again") == names(out) and names(tmp_path / "other") != names(out)
    assert again.train_counts == result.train_counts


def test_subsample_of_class_folders_uses_held_out_val_and_falls_back_to_copies(class_folder, tmp_path,
                                                                               monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("links not supported here")

    monkeypatch.setattr(os, "symlink", no_links)
    monkeypatch.setattr(os, "link", no_links)
    result = subsample(class_folder, 2, tmp_path / "s", seed=0)
    assert result.val_counts == {"blue": 2, "red": 2}  # 20% of 10 per class, held out as in training
    assert result.link_method == "copy" and any("symbolic links failed" in w for w in result.warnings)
    assert not any(p.is_symlink() for p in _files(tmp_path / "s"))
    with pytest.raises(ConfigError, match="not empty"):
        subsample(class_folder, 2, tmp_path / "s", seed=0)


def test_per_class_parsing_and_intervals():
    assert parse_per_class("5, 10,all") == [5, 10, None]
    with pytest.raises(ConfigError):
        parse_per_class("5,ten")
    with pytest.raises(ConfigError):
        parse_per_class("0")
    stats = mean_interval([0.8, 0.9, 1.0])
    assert stats["mean"] == pytest.approx(0.9) and stats["std"] == pytest.approx(0.1)
    assert stats["half_width"] == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)  # t(0.975, 2)
    assert mean_interval([0.5])["ci95"] is None


def test_label_efficiency_writes_json_and_plot(split_folder, tmp_path):
    cfg = TrainConfig(data_dir=split_folder, **{**TINY, "strategy": "feature-extraction", "epochs": 2})
    summary = label_efficiency(cfg, [2, None], seeds=2, out_dir=tmp_path / "le")
    saved = json.loads((tmp_path / "le" / "label_efficiency.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [s["label"] for s in saved["sizes"]] == ["2", "all"]
    small, full = saved["sizes"]
    assert [r["num_train"] for r in small["runs"]] == [6, 6] and full["runs"][0]["num_train"] == 24
    assert small["mean_per_class"] == 2 and full["mean_per_class"] == 8
    for size in saved["sizes"]:
        acc = size["val_accuracy"]
        assert acc["n"] == 2 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
        assert acc["mean"] == pytest.approx(sum(r["val_accuracy"] for r in size["runs"]) / 2)
    assert len(saved["gains"]) == 1 and "2 -> all" in saved["gains"][0]
    assert (tmp_path / "le" / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "le" / "runs" / "2-per-class-seed1" / "subsample.json").exists()


def test_cli_subsample_and_augment_preview(split_folder, tmp_path):
    result = invoke_graft("subsample", str(split_folder), "--per-class", "2", "--seed", "1", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert "train 6, val 9, unlabeled 18" in result.output
    preview = invoke_graft("augment-preview", str(split_folder), "--augment", "strong", "--image-size", "32",
                        "--out", str(tmp_path / "grid.png"))
    assert preview.exit_code == 0, preview.output
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_label_efficiency_runs_evaluate_to_their_own_metrics(class_folder, tmp_path):
    """Every size and seed validates on the one hold-out of the class-folder root, recorded in each run,
    so `graft evaluate RUN DATA` on a kept run reproduces its metrics.json."""
    cfg = TrainConfig(data_dir=class_folder, **{**TINY, "strategy": "feature-extraction", "epochs": 2})
    summary = label_efficiency(cfg, [3], seeds=2, out_dir=tmp_path / "le")
    assert summary["split"] == {"val_fraction": 0.2, "seed": 0}
    for seed in (0, 1):
        run = tmp_path / "le" / "runs" / f"3-per-class-seed{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert json.loads((run / "subsample.json").read_text())["split"]["seed"] == 0
        evaluated = graft("evaluate", str(run), str(class_folder), "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        result = json.loads(evaluated.stdout)
        assert result["num_images"] == metrics["num_val"] == 4
        assert result["accuracy"] == metrics["val_accuracy"]
        assert result["loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)


def test_the_label_efficiency_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from graftkit.workflows.label_efficiency import plot_label_efficiency

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        summary = {"data_dir": "d", "strategy": "fine-tune", "backbone": "tiny_cnn", "seeds": 1,
                   "sizes": [{"per_class": 2, "label": "2", "mean_per_class": 2.0,
                              "val_accuracy": {"mean": 0.5, "half_width": None}, "runs": [{"val_accuracy": 0.5}]}]}
        plot_label_efficiency(summary, tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)
