"""`graft evaluate RUN DIR` scores what DIR holds, and says which images and how many."""
from __future__ import annotations

import json
import shutil

import pytest

import graftkit

from .conftest import SHARED_DATASETS, TINY, graft, write_color_images


def test_evaluate_scores_what_the_folder_holds(session_run, tmp_path):
    model = graftkit.load(session_run)
    own = model.trained_on()
    metrics = json.loads((session_run / "metrics.json").read_text())
    same = model.evaluate(own)  # the run's own data: the exact validation set, so metrics.json again
    assert same["split"] == "val" and same["num_images"] == metrics["num_val"] == 9
    assert same["accuracy"] == pytest.approx(metrics["val_accuracy"]) and "validation set" in same["scored"]

    other = shutil.copytree(own, tmp_path / "other")  # another train/ + val/ folder: its val/
    result = model.evaluate(other)
    assert (result["split"], result["num_images"], result["scored"]) == ("val", 9, str(other / "val"))

    classes = shutil.copytree(own / "val", tmp_path / "classes")  # a folder of class folders: all of it
    result = model.evaluate(classes)
    assert (result["split"], result["num_images"], result["scored"]) == ("all", 9, f"all of {classes}")
    held_out = model.evaluate(classes, split="val")  # --split stays an explicit override
    assert held_out["num_images"] < 9 and "hold-out" in held_out["scored"]
    assert model.evaluate(own, split="all")["num_images"] == 33


def test_evaluate_cli_says_which_images_it_scored(session_run, tmp_path):
    classes = shutil.copytree(graftkit.load(session_run).trained_on() / "val", tmp_path / "classes")
    done = graft("evaluate", str(session_run), str(classes), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"on 9 images (all of {classes})" in done.stdout
    bad = graft("evaluate", str(session_run), str(classes), "--split", "some")
    assert bad.returncode == 2 and "--split" in bad.stderr


@pytest.mark.skipif(not (SHARED_DATASETS / "hymenoptera" / "val").is_dir(),
                    reason="../shared/datasets/hymenoptera is not here")
def test_evaluate_scores_all_153_images_of_hymenoptera_val(tmp_path):
    """The issue's example: a folder of class folders is scored whole, not a 20 % split of it."""
    for name, rgb in (("ants", (200, 120, 40)), ("bees", (230, 200, 40))):  # a tiny model with those classes
        write_color_images(tmp_path / "data" / name, rgb, 6)
    run = graftkit.fit(graftkit.TrainConfig(data_dir=tmp_path / "data", out_dir=tmp_path / "run",
                                            strategy="feature-extraction", augment="none", **{**TINY, "epochs": 1}))
    val = SHARED_DATASETS / "hymenoptera" / "val"
    done = graft("evaluate", str(run.out_dir), str(val), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"on 153 images (all of {val})" in done.stdout
