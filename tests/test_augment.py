from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit import ConfigError, TrainConfig, fit
from graftkit.data import AUGMENTS, DecodedImages, build_eval_transform, build_train_transform, scan_data
from graftkit.data.preview import augment_grid
from graftkit.engine.features import TailModel
from graftkit.engine.prepare import TrainingData
from graftkit.heads import Classifier
from graftkit.backbones import create_backbone
from graftkit.engine.progress import ProgressReporter
from graftkit.strategies import build_phases

from .conftest import TINY

MEAN = STD = (0.5, 0.5, 0.5)


@pytest.fixture
def pipeline_file(tmp_path):
    path = tmp_path / "aug.json"
    path.write_text(json.dumps({"transforms": [
        {"name": "RandomResizedCrop", "scale": [0.3, 1.0]}, "RandomHorizontalFlip",
        {"name": "RandAugment", "num_ops": 2}, {"name": "RandomErasing", "p": 1.0}]}))
    return path


def _phase_batches(cfg: TrainConfig, phase_index: int):
    """(module the phase trains, train batches, val batches) that fit would use, without training."""
    scan = scan_data(cfg.data_dir)
    decoded = DecodedImages(cfg.cache_dir, 37)
    for s in [*scan.train, *scan.val]:
        decoded.check_and_fill(s.path)
    decoded.flush()
    data = TrainingData(cfg, scan, decoded, 32, torch.device("cpu"))
    torch.manual_seed(0)  # the same random tiny_cnn each call
    model = Classifier(create_backbone("tiny_cnn"), len(scan.classes))
    phase = build_phases(cfg, 4)[phase_index]
    model.set_trainable(phase.trainable_stages(4), phase.train_bn)
    return data.batches_for(phase, model, torch.device("cpu"), "fp32", ProgressReporter("none"))


def _batches(cfg: TrainConfig, phase_index: int):
    """(train batches, val batches) fit would use in a phase's first epoch, without training."""
    _, train, val = _phase_batches(cfg, phase_index)
    train.set_epoch(0)
    return list(train), list(val)


def test_fine_tuning_below_frozen_stages_augments_every_epoch_afresh(split_folder, tmp_path):
    # Caching the frozen prefix of one clean crop per image would switch augmentation off for the
    # whole fine-tune (a regression seen in every --time-limit plan, which freezes stage 0).
    base = TrainConfig(data_dir=split_folder, **{**TINY, "freeze": 2}, cache_dir=tmp_path / "c")
    assert isinstance(_phase_batches(base.replace(augment="none"), 1)[0], TailModel)  # prefix cached
    clean = _batches(base.replace(augment="none", cache=False), 1)[0]  # the clean crops, as images
    net, train, _ = _phase_batches(base, 1)
    assert not isinstance(net, TailModel)  # the frozen stages run on each epoch's images
    epochs = []
    for epoch in (0, 1):
        train.set_epoch(epoch)
        epochs.append(list(train))
    first = epochs[0]
    assert [x.shape for x, _ in first] == [x.shape for x, _ in clean] and first[0][0].shape[1] == 3
    assert all(torch.equal(y, ry) for (_, y), (_, ry) in zip(first, clean))  # same order and labels...
    assert all(not torch.equal(x, rx) for (x, _), (rx, _) in zip(first, clean))  # ...augmented images

    def by_label(batches):  # each epoch's images, in an order that does not depend on the shuffle
        return sorted((round(x.sum().item(), 3), int(y)) for xs, ys in batches for x, y in zip(xs, ys))
    assert by_label(epochs[0]) != by_label(epochs[1])  # fresh augmentation, not one fixed view
    # --cache-views N asks for N fixed views: those are cached
    assert isinstance(_phase_batches(base.replace(cache_views=3), 1)[0], TailModel)


@pytest.mark.parametrize("phase_index", [0, 1])  # head phase (cached features) and fine-tune (images)
def test_validation_batches_are_identical_whatever_the_augmentation(split_folder, pipeline_file, tmp_path,
                                                                    phase_index):
    base = TrainConfig(data_dir=split_folder, **{**TINY, "cache_views": 3}, cache_dir=tmp_path / "c")
    reference_train, reference_val = _batches(base.replace(augment="none"), phase_index)
    for augment in [*AUGMENTS, str(pipeline_file)]:
        train, val = _batches(base.replace(augment=augment, mixup=0.4, cutmix=1.0), phase_index)
        assert len(val) == len(reference_val)
        for (x, y), (rx, ry) in zip(val, reference_val):
            assert torch.equal(x, rx) and torch.equal(y, ry), augment
        if augment != "none":  # ...while training data does change: the test can see a difference
            assert any(not torch.equal(x, rx) for (x, _), (rx, _) in zip(train, reference_train)), augment


def test_presets_change_train_images_only_and_keep_shapes():
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (37, 37, 3), dtype=np.uint8)).permute(2, 0, 1)
    eval_tf = build_eval_transform(32, MEAN, STD)
    torch.manual_seed(0)
    for augment in AUGMENTS:
        out = build_train_transform(32, MEAN, STD, augment)(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out, eval_tf(image)) == (augment == "none")


def test_custom_pipeline_file_is_validated(tmp_path, pipeline_file):
    out = build_train_transform(32, MEAN, STD, str(pipeline_file))(torch.zeros(3, 37, 37, dtype=torch.uint8) + 200)
    assert out.shape == (3, 32, 32)
    assert (out == 0).any()  # RandomErasing (p=1) ran after normalisation: erased pixels are exactly 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"transforms": [{"name": "os.system"}]}))
    with pytest.raises(ConfigError, match="not a torchvision.transforms.v2 transform"):
        build_train_transform(32, MEAN, STD, str(bad))
    with pytest.raises(ConfigError, match="augment must be one of"):
        TrainConfig(data_dir=tmp_path, augment="heavy")
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig(data_dir=tmp_path, augment=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="mixup"):
        TrainConfig(data_dir=tmp_path, mixup=-1)


def test_fit_with_strong_augmentation_and_mixing_writes_the_grid(split_folder, tmp_path):
    run = fit(TrainConfig(data_dir=split_folder, **{**TINY, "strategy": "scratch", "epochs": 1},
                          augment="strong", mixup=0.2, cutmix=1.0, out_dir=tmp_path / "run"))
    grid = Image.open(run.out_dir / "augmentations.jpg")  # a JPEG since 0.2 (a PNG was ~4 MB at 224 px)
    # 8 images (classes in turn) + a mixed row; 6 columns (val crop + 5 views) of 32 px + gaps; header
    assert grid.size == (6 * 34, 12 + 9 * 34)
    assert 0 <= run.metrics["val_accuracy"] <= 1


def test_mixing_gives_soft_targets_and_grid_rows():
    squares = [np.full((37, 37, 3), v, dtype=np.uint8) for v in (10, 240)]
    assert augment_grid(squares, 32, "light", num_views=2).size == (3 * 34, 12 + 2 * 34)
    assert augment_grid(squares, 32, "light", num_views=2, mixup=1.0).size == (3 * 34, 12 + 3 * 34)
