"""`graft ensemble`: trained runs joined into one model that averages their calibrated logits."""
from __future__ import annotations

import json

import numpy as np
import torch

import graftkit
from graftkit import TrainConfig, fit
from graftkit.backbones.ensemble import parse_ensemble_name

from .conftest import TINY, graft


def _run(data, out, **changes):
    return fit(TrainConfig(data_dir=data, out_dir=out, precision="fp32", **{**TINY, **changes}))


def test_the_joined_model_averages_the_members_calibrated_logits(split_folder, tmp_path):
    runs = [_run(split_folder, tmp_path / "a", seed=0), _run(split_folder, tmp_path / "b", seed=1, dropout=0.1)]
    result = graft("ensemble", str(runs[0].out_dir), str(runs[1].out_dir), "--out", str(tmp_path / "ens"),
                   "--device", "cpu")
    assert result.returncode == 0, result.stderr
    joined = graftkit.load(tmp_path / "ens")
    members = [graftkit.load(r.out_dir) for r in runs]
    images = sorted((split_folder / "val").rglob("*.png"))
    expected = np.mean([m.logits(images).numpy() / m.temperature for m in members], 0)
    np.testing.assert_allclose(joined.logits(images).numpy(), expected, atol=1e-4, rtol=1e-4)
    assert joined.temperature != 1.0 and joined.meta["calibration"]["num_images"] == len(images)
    metrics = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    labels = [joined.classes.index(p.parent.name) for p in images]
    accuracy = float((joined.predict_proba(images).argmax(1) == np.array(labels)).mean())
    assert metrics["val_accuracy"] == accuracy
    assert [m["val_accuracy"] for m in metrics["members"]] == [r.metrics["val_accuracy"] for r in runs]
    assert f"val_accuracy {accuracy:.4f}" in result.stdout
    again = graft("evaluate", str(tmp_path / "ens"), str(split_folder))  # its own validation set, reproduced
    assert again.returncode == 0 and f"accuracy {accuracy:.4f}" in again.stdout and "validation set" in again.stdout
    unknown = graft("predict", str(tmp_path / "ens"), str(images[0]), "--reject-unknown")
    assert unknown.returncode == 2 and "use a member's run folder" in unknown.stderr
    nested = graft("ensemble", str(tmp_path / "ens"), str(runs[0].out_dir), "--out", str(tmp_path / "nested"))
    assert nested.returncode == 2 and "is an ensemble already" in nested.stderr
    resumed = graft("train", "--resume", str(tmp_path / "ens"))
    assert resumed.returncode == 2 and "nothing" not in resumed.stderr and "no training to resume" in resumed.stderr


def test_members_of_different_sizes_each_see_their_own_size(split_folder, tmp_path):
    small = _run(split_folder, tmp_path / "small", image_size=24)
    large = _run(split_folder, tmp_path / "large")
    assert graft("ensemble", str(small.out_dir), str(large.out_dir), "--out", str(tmp_path / "ens")).returncode == 0
    joined = graftkit.load(tmp_path / "ens")
    assert parse_ensemble_name(joined.meta["backbone"]) == [("tiny_cnn", 24), ("tiny_cnn", 32)]
    assert joined.image_size == 32 and joined.meta["preprocessing"]["resize"] == 37  # the largest member's
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape[-2:])))
             for m in joined.model.backbone.stages[0].members]
    joined.predict(sorted((split_folder / "val").rglob("*.png"))[:2])
    for hook in hooks:
        hook.remove()
    assert seen == [(24, 24), (32, 32)]


def test_runs_that_cannot_be_joined_are_refused_in_one_line(split_folder, class_folder, tmp_path):
    a = _run(split_folder, tmp_path / "a")
    colours = _run(class_folder, tmp_path / "colours")
    other_split = _run(class_folder, tmp_path / "other-split", val_fraction=0.4)  # another hold-out
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("the user's")
    for args, words in [((a.out_dir,), "at least two run folders"),
                        ((a.out_dir, colours.out_dir), "same classes"),
                        ((colours.out_dir, other_split.out_dir), "another validation split"),
                        ((a.out_dir, a.out_dir, "--out", tmp_path / "used"), "not an empty folder")]:
        out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
        result = graft("ensemble", *map(str, args), *out)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "used" / "keep.txt").read_text() == "the user's" and not (tmp_path / "new").exists()
