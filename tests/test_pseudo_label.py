from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from graftkit import ConfigError, TrainConfig
from graftkit.data import scan_data
from graftkit.semi import class_caps, pseudo_label, select_pseudo_labels, with_extra_train
from graftkit.semi.pseudo_label import PseudoLabel
from graftkit.workflows.self_training import PseudoLabelConfig, train_with_pseudo_labels

from .conftest import TINY, graft, invoke_graft, write_color_images


class StubModel:
    """Returns fixed probabilities, whatever the images."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, dtype=np.float64)
        self.calls = 0

    def predict_proba(self, paths):
        self.calls += 1
        assert len(paths) == len(self.probs)
        return self.probs


def _paths(n):
    return [Path(f"u{i}.png") for i in range(n)]


def test_threshold_and_per_class_caps_keep_the_most_confident():
    # class 0 is predicted 6 times (the "majority"), class 1 twice, class 2 never
    probs = [[0.99, 0.01, 0.0], [0.95, 0.05, 0.0], [0.90, 0.1, 0.0], [0.85, 0.15, 0.0], [0.6, 0.4, 0.0],
             [0.45, 0.3, 0.25], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]]
    result = pseudo_label(StubModel(probs), _paths(8), caps=[3, 3, 3], threshold=0.5)
    assert [p.path.name for p in result.chosen] == ["u0.png", "u1.png", "u2.png", "u6.png", "u7.png"]
    assert result.counts() == [3, 2, 0]  # the cap stopped class 0 at 3; 0.45 was under the threshold
    assert all(p.confidence >= 0.5 for p in result.chosen)
    assert result.thresholds == [0.5, 0.5, 0.5]
    # the least confident, by margin, are the ones to label next
    assert [p.path.name for p in result.least_confident(2)] == ["u5.png", "u4.png"]


def test_class_quantile_raises_the_bar_per_class():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55]])
    result = select_pseudo_labels(probs, _paths(6), threshold=0.5, caps=[10, 10], class_quantile=0.5)
    assert result.thresholds[0] == pytest.approx(0.75)       # median of 0.9, 0.8, 0.7, 0.6
    assert result.thresholds[1] == pytest.approx(0.725)      # median of 0.9, 0.55
    assert sorted(p.path.name for p in result.chosen) == ["u0.png", "u1.png", "u4.png"]


def test_caps_follow_the_labelled_counts():
    assert class_caps([10, 2, 5], max_ratio=3, max_per_class=None) == [30, 6, 15]
    assert class_caps([10, 2, 5], max_ratio=3, max_per_class=8) == [8, 6, 8]
    assert class_caps([10, 2], max_ratio=None, max_per_class=4) == [4, 4]
    with pytest.raises(ConfigError, match="cap"):
        PseudoLabelConfig(Path("u"), max_ratio=None, max_per_class=None)
    with pytest.raises(ConfigError, match="threshold"):
        PseudoLabelConfig(Path("u"), threshold=1.5)


def test_extra_samples_go_to_train_only(split_folder):
    scan = scan_data(split_folder, verify=False)
    extra = [PseudoLabel(Path("x.png"), 1, 0.9, 0.8)]
    bigger = with_extra_train(scan, extra)
    assert len(bigger.train) == len(scan.train) + 1 and bigger.train[-1].path == Path("x.png")
    assert bigger.val == scan.val and len(scan.train) == 24  # the original is untouched


@pytest.fixture
def scarce_folder(tmp_path):
    """2 labelled images per class (+ val), and an unlabelled pile of 8 per class plus a bad file."""
    root = tmp_path / "scarce"
    colours = {"red": (210, 40, 40), "green": (40, 210, 40), "blue": (40, 40, 210)}
    for i, (name, rgb) in enumerate(colours.items()):
        write_color_images(root / "train" / name, rgb, 2, seed=i)
        write_color_images(root / "val" / name, rgb, 3, seed=10 + i)
        write_color_images(tmp_path / "pile" / name, rgb, 8, seed=20 + i)
    (tmp_path / "pile" / "broken.jpg").write_text("not an image")
    # a copy of a validation image must never become a pseudo-label (it would leak val into train)
    (tmp_path / "pile" / "copy.png").write_bytes((root / "val" / "red" / "000.png").read_bytes())
    return root, tmp_path / "pile"


def test_self_training_writes_rounds_csvs_and_final_run(scarce_folder, tmp_path):
    data, pile = scarce_folder
    cfg = TrainConfig(data_dir=data, **{**TINY, "strategy": "feature-extraction", "epochs": 3}, lr=0.05,
                      out_dir=tmp_path / "pl")
    rounds = []
    run = train_with_pseudo_labels(cfg, PseudoLabelConfig(pile, rounds=2, threshold=0.0, max_ratio=2),
                                   on_round=rounds.append)
    out = tmp_path / "pl"
    assert run.out_dir == out
    for name in ("round0", "round1", "round2"):
        assert (out / name / "metrics.json").exists()
    summary = json.loads((out / "pseudo_label.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["num_unlabeled"] == 24  # broken file and the copy of a val image left out
    assert any("copies" in n for n in summary["notes"]) and any("unreadable" in n for n in summary["notes"])
    for r in summary["rounds"][1:]:
        assert all(n <= 4 for n in r["added"].values())  # cap: 2 x 2 labelled per class
        assert r["num_train"] == 6 + r["num_pseudo"]
    rows = list(csv.DictReader((out / "pseudo_labels.csv").open()))
    assert rows and set(rows[0]) == {"path", "label", "confidence", "round"}
    assert {int(r["round"]) for r in rows} <= {1, 2}
    assert not any(r["path"].endswith("copy.png") for r in rows)
    label_next = list(csv.DictReader((out / "label_next.csv").open()))
    assert 0 < len(label_next) <= 24 and float(label_next[0]["margin"]) <= float(label_next[-1]["margin"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] == summary["rounds"][-1]["val_accuracy"]
    assert metrics["pseudo_label"]["baseline_val_accuracy"] == summary["rounds"][0]["val_accuracy"]
    assert (out / "model.safetensors").exists() and len(rounds) == 3


def test_cli_pseudo_label_and_flag_errors(scarce_folder, tmp_path):
    data, pile = scarce_folder
    flags = ["--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu", "--strategy",
             "feature-extraction", "--epochs", "2"]
    result = invoke_graft("train", str(data), *flags, "--unlabeled", str(pile), "--pseudo-label", "--rounds", "1",
                          "--out", str(tmp_path / "cli"))
    assert result.exit_code == 0, result.output
    assert "round 1:" in result.output and "pseudo-label: val_accuracy" in result.output
    alone = graft("train", str(data), *flags, "--pseudo-label", "--out", str(tmp_path / "x"))
    assert alone.returncode == 2 and "--unlabeled" in alone.stderr and "Traceback" not in alone.stderr


@pytest.mark.parametrize("strategy", ["feature-extraction", "fine-tune"])
def test_run_predictor_matches_the_saved_model(split_folder, tmp_path, strategy):
    """The cached-feature predictor used between rounds agrees with `graftkit.load(run).predict_proba`."""
    import graftkit
    from graftkit.data import DecodedImages
    from graftkit.semi import RunPredictor, find_unlabeled_images

    run = graftkit.fit(TrainConfig(data_dir=split_folder, **{**TINY, "strategy": strategy}, out_dir=tmp_path / "r"))
    decoded = DecodedImages(run.config.cache_dir, 37)
    paths, _ = find_unlabeled_images(split_folder / "val", decoded)
    ours = RunPredictor(run, decoded).predict_proba(paths)
    saved = graftkit.load(run.out_dir).predict_proba(paths)
    np.testing.assert_allclose(ours, saved, atol=1e-5)


def test_pseudo_label_run_on_class_folders_evaluates_to_its_own_metrics(class_folder, tmp_path):
    """No val/: the hold-out is seeded. Self-training must train and validate on the split that its
    run folder records, so that `graft evaluate RUN DATA` rebuilds exactly that hold-out."""
    pile = tmp_path / "pile"
    write_color_images(pile / "a", (210, 40, 40), 6, seed=30)
    write_color_images(pile / "b", (40, 40, 210), 6, seed=31)
    out = tmp_path / "pl"
    done = graft("train", str(class_folder), "--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu",
                 "--strategy", "feature-extraction", "--epochs", "2", "--seed", "1", "--split-seed", "2",
                 "--unlabeled", str(pile), "--pseudo-label", "--rounds", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "model.json").read_text())["split"]["seed"] == 2
    assert json.loads((out / "pseudo_label.json").read_text())["split"]["seed"] == 2
    evaluated = graft("evaluate", str(out), str(class_folder), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["num_images"] == metrics["num_val"] == 4
    assert result["accuracy"] == metrics["val_accuracy"]
    assert result["loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)  # the same four images
