from __future__ import annotations

import pytest
import torch

from graftkit import ConfigError, TrainConfig, create_backbone
from graftkit.heads import Classifier
from graftkit.strategies import build_optimizer, build_phases, phase_at, warmup_cosine


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data_dir="unused", backbone="tiny_cnn", **kw)


def test_fine_tune_is_head_then_unfreeze():
    phases = build_phases(_cfg(head_epochs=2, finetune_epochs=3, freeze=1, stage_lr_decay=0.5), num_stages=4)
    assert [(p.name, p.epochs) for p in phases] == [("head", 2), ("finetune", 3)]
    assert [phase_at(phases, e)[1].name for e in range(5)] == ["head"] * 2 + ["finetune"] * 3
    assert phases[0].trainable_stages(4) == [False] * 4
    assert phases[1].trainable_stages(4) == [False, True, True, True]
    mults = phases[1].lr_multipliers(4)
    assert mults == [0.0, 0.125, 0.25, 0.5, 1.0]  # frozen, decaying downwards, head 1x


def test_scratch_trains_every_stage_at_the_same_rate():
    (phase,) = build_phases(_cfg(strategy="scratch", stage_lr_decay=0.5), num_stages=4)
    assert phase.lr_multipliers(4) == [1.0] * 5 and phase.train_bn


def test_freeze_all_stages_is_refused():
    with pytest.raises(ConfigError, match="--freeze 4"):
        build_phases(_cfg(freeze=4), num_stages=4)


def test_warmup_cosine_shape():
    factors = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[99] < 0.01 and all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_model_train_cannot_undo_a_freeze():
    model = Classifier(create_backbone("tiny_cnn"), num_classes=3)
    model.set_trainable([False, False, True, True], train_bn=False)
    model.train()
    stages = model.backbone.stages
    assert not stages[0].training and not stages[1].training
    assert not stages[2][1].training  # BN of an unfrozen stage stays in inference mode
    assert model.head.training
    assert not any(p.requires_grad for p in stages[0].parameters())
    assert all(p.requires_grad for p in stages[3].parameters())


def test_frozen_stages_stay_bit_identical_during_training():
    torch.manual_seed(0)
    model = Classifier(create_backbone("tiny_cnn"), num_classes=2)
    model.set_trainable([False, False, True, True], train_bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, weight_decay=0.1)
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 2, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(("backbone.stages.0.", "backbone.stages.1.")):
            assert torch.equal(before[key], after[key]), key  # weights and BN buffers alike
    assert not torch.equal(before["backbone.stages.3.0.weight"], after["backbone.stages.3.0.weight"])
    assert not torch.equal(before["backbone.stages.3.1.running_mean"], after["backbone.stages.3.1.running_mean"])


def test_optimizer_has_a_group_per_stage_and_head():
    model = Classifier(create_backbone("tiny_cnn"), num_classes=2)
    names = [g["name"] for g in build_optimizer(model, 0.0).param_groups]
    assert names == ["stage0", "stage1", "stage2", "stage3", "head"]
