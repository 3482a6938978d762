from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from graftkit import ConfigError, TrainConfig, fit, metrics
from graftkit.data import scan_data
from graftkit.data.folders import batch_order
from graftkit.engine.balance import (WeightedCrossEntropy, build_loss, class_weights, resolve_balance,
                                     sample_weights)
from graftkit.scarce import subsample
from graftkit.scarce.subsample import long_tail_profile

from .conftest import SHARED_DATASETS, TINY, graft, write_color_images


@pytest.fixture
def imbalanced_folder(tmp_path):
    """train/ red 24, green 8, blue 4 (max/min 6x); val/ 4 of each."""
    root = tmp_path / "imbalanced"
    for i, (name, rgb, count) in enumerate([("red", (210, 40, 40), 24), ("green", (40, 210, 40), 8),
                                             ("blue", (40, 40, 210), 4)]):
        write_color_images(root / "train" / name, rgb, count, seed=i)
        write_color_images(root / "val" / name, rgb, 4, seed=10 + i)
    return root


def test_class_weights_are_inverse_frequency_with_mean_one_over_images():
    labels = [0] * 6 + [1] * 3 + [2] * 1
    weights = class_weights(labels, 3)
    assert torch.allclose(weights, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    assert math.isclose(float(weights[torch.tensor(labels)].mean()), 1.0, rel_tol=1e-6)
    assert class_weights([0, 0, 2], 3)[1] == 0  # no training image: no weight, no division by zero


def test_weighted_loss_weighs_each_images_smoothed_loss_by_its_class():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    weight, eps = torch.tensor([0.5, 1.0, 2.0]), 0.1
    log_p = logits.log_softmax(1)
    by_hand = [weight[y] * ((1 - eps) * -log_p[i, y] - eps / 3 * log_p[i].sum()) for i, y in enumerate(targets)]
    loss = WeightedCrossEntropy(weight, label_smoothing=eps)(logits, targets)
    assert torch.allclose(loss, torch.stack(by_hand).mean())
    # equal weights: exactly PyTorch's smoothed cross-entropy
    assert torch.allclose(WeightedCrossEntropy(torch.ones(3), eps)(logits, targets),
                          nn.CrossEntropyLoss(label_smoothing=eps)(logits, targets))
    # soft targets (MixUp): an image's weight is its target mix of the class weights
    soft = torch.tensor([[0.7, 0.3, 0.0]] * 5)
    per_image = nn.CrossEntropyLoss(reduction="none", label_smoothing=eps)(logits, soft)
    assert torch.allclose(WeightedCrossEntropy(weight, eps)(logits, soft), (per_image * (0.7 * 0.5 + 0.3)).mean())


def test_auto_turns_on_at_three_times_and_not_below():
    at_three = resolve_balance("auto", [0] * 6 + [1] * 2, 2)
    below = resolve_balance("auto", [0] * 5 + [1] * 2, 2)
    assert at_three.method == "weights" and at_three.imbalanced and at_three.best_by == "val_balanced_accuracy"
    assert "classes imbalanced (max/min 3.0×): balance=weights; best epoch chosen by balanced accuracy" \
        == at_three.describe()
    assert below.method == "none" and not below.imbalanced and below.best_by == "val_accuracy"
    assert below.describe() is None  # balanced data: the output says nothing new
    assert resolve_balance("sampler", [0] * 5 + [1] * 2, 2).method == "sampler"  # asked: done even below 3x
    assert isinstance(build_loss(below, [0] * 5 + [1] * 2, 2, 0.1), nn.CrossEntropyLoss)
    assert isinstance(build_loss(at_three, [0] * 6 + [1] * 2, 2, 0.1), WeightedCrossEntropy)
    with pytest.raises(ConfigError, match="balance must be one of none, weights, sampler, auto"):
        TrainConfig(data_dir=".", balance="oversample")


def test_sampler_draws_classes_about_equally_seeded_and_sharded():
    labels = [0] * 900 + [1] * 100
    weights = sample_weights(labels, 2)

    def draw(seed, shard=(0, 1)):
        return batch_order(1000, 50, True, torch.Generator().manual_seed(seed), False, shard, weights)

    batches = draw(0)
    drawn = [i for b in batches for i in b]
    assert len(drawn) == 1000 and len(batches) == 20  # an epoch keeps its number of images and steps
    share = Counter(labels[i] for i in drawn)[1] / 1000
    assert 0.44 < share < 0.56  # 10 % of the images, about half the draws
    assert draw(0) == batches and draw(1) != batches  # seeded
    ranks = [draw(0, (rank, 2)) for rank in range(2)]  # DDP: the ranks split the same global batches
    assert all(sorted(a + b) == sorted(c) for a, b, c in zip(*ranks, batches))


def test_balanced_accuracy_and_macro_f1_match_hand_computed_values():
    labels, preds = [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 2]
    assert math.isclose(metrics.balanced_accuracy(labels, preds), (3 / 4 + 1 / 2) / 2)
    # F1: class 0 = 2*1*0.75/1.75, class 1 = 0.5, class 2 (predicted, never true) = 0
    assert math.isclose(metrics.macro_f1(labels, preds), (6 / 7 + 0.5 + 0) / 3)
    result = metrics.classification_metrics(np.array(labels), np.array(preds), ["a", "b", "c"])
    assert result["balanced_accuracy"] == pytest.approx(0.625) and result["macro_f1"] == pytest.approx(0.4523809)
    assert metrics.balanced_accuracy([], []) == 0.0 and metrics.macro_f1([], []) == 0.0


def _best_row(history, key):
    return max(history, key=lambda r: (r[key], -r["val_loss"]))


@pytest.mark.parametrize("balance", ["auto", "sampler"])
def test_imbalanced_run_picks_best_epoch_by_balanced_accuracy(imbalanced_folder, tmp_path, balance):
    cfg = TrainConfig(data_dir=imbalanced_folder, strategy="feature-extraction", out_dir=tmp_path / "run",
                      balance=balance, lr=1e-2, **{**TINY, "epochs": 4, "head_epochs": None, "finetune_epochs": None})
    run = fit(cfg)  # feature-extraction: the head trains on cached features, the sampler's path too
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["balance"] == {"requested": balance, "method": "weights" if balance == "auto" else "sampler",
                                "max_min_ratio": 6.0, "imbalanced": True, "best_epoch_by": "val_balanced_accuracy"}
    assert saved["best_epoch"] == _best_row(run.history, "val_balanced_accuracy")["epoch"]
    assert 0 <= saved["val_balanced_accuracy"] <= 1 and 0 <= saved["val_macro_f1"] <= 1
    assert all(r["train_images"] == 32 for r in run.history)  # 36 images, drop_last batches of 8: same per epoch
    if balance == "auto":
        assert graft("report", str(tmp_path / "run")).returncode == 0
        page = (tmp_path / "run" / "report.html").read_text()
        assert "validation balanced accuracy" in page and "validation macro-F1" in page
        assert "by balanced accuracy: classes imbalanced, max/min 6.0×, balance=weights" in page


def test_balanced_run_is_unchanged_by_auto(split_folder, tmp_path):
    runs = {b: fit(TrainConfig(data_dir=split_folder, strategy="feature-extraction", out_dir=tmp_path / b,
                               balance=b, **{**TINY, "epochs": 2, "head_epochs": None, "finetune_epochs": None}))
            for b in ("auto", "none")}
    assert [r["val_loss"] for r in runs["auto"].history] == [r["val_loss"] for r in runs["none"].history]
    assert runs["auto"].metrics["balance"]["method"] == "none"
    assert runs["auto"].metrics["balance"]["best_epoch_by"] == "val_accuracy"


def test_train_says_it_balances(imbalanced_folder, tmp_path):
    result = graft("train", str(imbalanced_folder), "--out", str(tmp_path / "run"), "--plain", "--epochs", "2",
                   "--strategy", "feature-extraction", *[f for f in _tiny_fe_flags()])
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "classes imbalanced (max/min 6.0×): balance=weights; best epoch chosen by balanced accuracy" in said
    assert "balanced accuracy" in said and "bal_acc" in said
    bad = graft("train", str(imbalanced_folder), "--balance", "oversample", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "balance must be one of" in bad.stderr + bad.stdout


def _tiny_fe_flags():
    return ["--backbone=tiny_cnn", "--image-size=32", "--batch-size=8", "--device=cpu"]


def test_subsample_long_tail_profile_and_untouched_val(tmp_path):
    data = tmp_path / "data"
    for i, name in enumerate("abcde"):
        write_color_images(data / "train" / name, (40 * i, 100, 200 - 40 * i), 20, size=8, seed=i)
        write_color_images(data / "val" / name, (40 * i, 100, 200 - 40 * i), 3, size=8, seed=10 + i)
    profile = long_tail_profile({c: 20 for c in "abcde"}, 10, seed=0)
    assert sorted(profile.values(), reverse=True) == [20, 11, 6, 4, 2]  # 20 * 10 ** (-r / 4), rounded
    assert list(profile.values()) == sorted(profile.values(), reverse=True)  # in rank order
    result = subsample(data, None, tmp_path / "tail", seed=0, long_tail=10)
    assert result.train_counts == profile and result.val_counts == {c: 3 for c in "abcde"}
    manifest = json.loads((tmp_path / "tail" / "subsample.json").read_text())
    assert manifest["long_tail"] == {"ratio": 10, "order": list(profile), "profile": profile}
    assert long_tail_profile({c: 20 for c in "abcde"}, 10, seed=1) != profile  # another seed, another order
    printed = graft("subsample", str(data), "--long-tail", "10", "--out", str(tmp_path / "cli"))
    assert printed.returncode == 0 and "long tail 10×: " + ", ".join(f"{c} {n}" for c, n in profile.items()) \
        in printed.stdout
    assert sorted(p.name for p in (data / "train" / "a").iterdir()) == [f"{i:03d}.png" for i in range(20)]
    with pytest.raises(ConfigError, match=">= 1"):
        long_tail_profile({"a": 5, "b": 5}, 0.5, seed=0)
    both = graft("subsample", str(data), "--long-tail", "10", "--per-class", "3", "--out", str(tmp_path / "x"))
    assert both.returncode == 2 and "one of --per-class N or --long-tail RATIO" in both.stdout + both.stderr


def test_evaluate_prints_balanced_accuracy_and_macro_f1(session_run):
    data = json.loads((session_run / "config.json").read_text())["data_dir"]
    result = graft("evaluate", str(session_run), data)
    assert result.returncode == 0, result.stderr
    assert "balanced accuracy " in result.stdout and "macro-F1 " in result.stdout
    as_json = json.loads(graft("evaluate", str(session_run), data, "--json").stdout)
    assert 0 <= as_json["balanced_accuracy"] <= 1 and 0 <= as_json["macro_f1"] <= 1


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not here")
@pytest.mark.parametrize("name", ["hymenoptera", "flower_photos_1250"])
def test_real_balanced_datasets_stay_below_the_auto_threshold(name):
    scan = scan_data(SHARED_DATASETS / name, verify=False)
    labels = [s.label for s in scan.train]
    assert resolve_balance("auto", labels, len(scan.classes)).method == "none"


@pytest.mark.slow
def test_sampler_under_two_torchrun_ranks_trains_as_one_process(tmp_path):
    """``--balance sampler --nproc 2`` (gloo) against one process with ``--accumulate 2``: every rank
    draws the same class-balanced order and takes its share, so the weights agree."""
    from safetensors.torch import load_file

    from .test_distributed import EXACT, WEIGHT_ATOL

    data = tmp_path / "data"
    for i, (name, rgb, count) in enumerate([("red", (210, 40, 40), 12), ("green", (40, 210, 40), 4),
                                             ("blue", (40, 40, 210), 3)]):
        write_color_images(data / "train" / name, rgb, count, seed=i)
        write_color_images(data / "val" / name, rgb, 3, seed=10 + i)
    runs = {}
    for name, extra in (("one", ["--accumulate", "2"]), ("two", ["--nproc", "2"])):
        result = graft("train", str(data), *EXACT, "--balance", "sampler", *extra, "--out", str(tmp_path / name),
                       "--cache-dir", str(tmp_path / f"cache-{name}"))
        assert result.returncode == 0, result.stderr
        runs[name] = load_file(tmp_path / name / "model.safetensors")
    for name, tensor in runs["one"].items():
        torch.testing.assert_close(runs["two"][name], tensor, rtol=1e-4, atol=WEIGHT_ATOL, msg=name)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["balance"]["method"] == "sampler"
