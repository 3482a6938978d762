"""--head-init: a new head that starts from the pretrained ImageNet classifier's rows of the user's classes."""
from __future__ import annotations

import json

import pytest
import torch
from .conftest import TINY, write_color_images

from graftkit import TrainConfig, fit
from graftkit.backbones import registry
from graftkit.backbones.imagenet_classes import imagenet_index, imagenet_rows
from graftkit.errors import ConfigError


def test_folder_names_find_their_imagenet_class():
    assert imagenet_rows(["ants", "bees"]) == [310, 309]  # plural folder names, ImageNet's first synonym
    assert imagenet_rows(["n02219486", "bee"]) == [310, 309]  # a WordNet id, as imagenette folders are named
    assert imagenet_rows(["001.Tiger_shark", "Goldfish"]) == [3, 1]  # a numbered prefix, underscores, case
    assert imagenet_index("daisies") == 985
    assert imagenet_index("emmet") == 310  # any of the synonyms


@pytest.mark.parametrize("classes", [["ants", "dandelion"],  # one class is not an ImageNet class
                                     ["crane", "bee"],       # "crane" is two ImageNet classes (bird, machine)
                                     ["ant", "ants"],        # two folders, one ImageNet class
                                     ["bee"]])
def test_no_rows_unless_every_class_names_a_different_imagenet_class(classes):
    assert imagenet_rows(classes) is None


def test_a_pretrained_timm_model_keeps_its_imagenet_classifier_aside():
    import timm

    from graftkit.backbones.timm_models import split_timm_model

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    kept = split_timm_model(model, "x", (0.5,) * 3, (0.5,) * 3, 224, pretrained=True)
    weight, bias = kept.imagenet_head
    assert weight.shape == (1000, kept.num_features) and torch.equal(weight, model.classifier.weight)
    assert torch.equal(bias, model.classifier.bias)
    assert "imagenet" not in " ".join(kept.state_dict())  # not trained, not saved with the run
    assert split_timm_model(model, "x", (0.5,) * 3, (0.5,) * 3, 224, pretrained=False).imagenet_head is None


@pytest.fixture
def imagenet_tiny(monkeypatch):
    """``tiny_imagenet``: tiny_cnn as if pretrained, with a seeded 1000-class classifier kept aside."""
    tiny = registry.registered("tiny_cnn")
    generator = torch.Generator().manual_seed(0)
    head = (torch.randn(1000, 32, generator=generator), torch.randn(1000, generator=generator))

    def factory(pretrained: bool = True, weights=None):
        backbone = tiny.factory(pretrained=pretrained, weights=weights)
        backbone.pretrained = pretrained
        backbone.imagenet_head = head if pretrained else None
        return backbone

    monkeypatch.setitem(registry._REGISTRY, "tiny_imagenet",
                        registry.BackboneInfo("tiny_imagenet", factory, True, "test", 32))
    return head


def _ants_and_bees(root):
    write_color_images(root / "ants", (210, 40, 40), 8, seed=1)
    write_color_images(root / "bees", (40, 40, 210), 8, seed=2)
    return root


def _head_after_prepare(cfg):
    from graftkit.engine.prepare import prepare

    prepared = prepare(cfg)
    return prepared.model.head[-1], prepared.head_init


def test_the_head_starts_from_the_imagenet_rows_of_the_classes(tmp_path, imagenet_tiny):
    data = _ants_and_bees(tmp_path / "data")
    cfg = TrainConfig(data_dir=data, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
                      **{**TINY, "backbone": "tiny_imagenet"})
    linear, pairs = _head_after_prepare(cfg)
    weight, bias = imagenet_tiny
    assert pairs == [("ants", "ant"), ("bees", "bee")]
    assert torch.equal(linear.weight, weight[[310, 309]]) and torch.equal(linear.bias, bias[[310, 309]])

    random_linear, none = _head_after_prepare(cfg.replace(head_init="random"))
    assert none is None and not torch.equal(random_linear.weight, weight[[310, 309]])
    _, no_pretrained = _head_after_prepare(cfg.replace(pretrained=False))
    assert no_pretrained is None


def test_a_class_that_names_no_imagenet_class_keeps_the_random_head(tmp_path, imagenet_tiny, class_folder):
    cfg = TrainConfig(data_dir=class_folder, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
                      **{**TINY, "backbone": "tiny_imagenet"})
    linear, pairs = _head_after_prepare(cfg)  # red, blue
    assert pairs is None and not torch.equal(linear.weight[0], imagenet_tiny[0][0])


def test_the_run_says_where_its_head_started(tmp_path, imagenet_tiny, capsys):
    data = _ants_and_bees(tmp_path / "data")
    cfg = TrainConfig(data_dir=data, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
                      **{**TINY, "backbone": "tiny_imagenet", "progress": "plain", "strategy": "feature-extraction"})
    run = fit(cfg)
    assert "head: starts from the backbone's ImageNet classifier (ants → ant, bees → bee)" in capsys.readouterr().out
    metrics = json.loads((run.out_dir / "metrics.json").read_text())
    assert metrics["head_init"] == {"from": "imagenet", "classes": {"ants": "ant", "bees": "bee"}}
    config = json.loads((run.out_dir / "config.json").read_text())
    assert config["head_init"] == "auto"
    from graftkit.report.html import used_settings

    assert dict(used_settings(config, metrics))["head_init"] == "auto: the ImageNet classifier's rows (ants → ant, bees → bee)"
    assert "head_init" not in dict(used_settings({**config, "strategy": "scratch"}, {}))


def test_head_init_takes_auto_or_random(tmp_path):
    with pytest.raises(ConfigError, match="head_init"):
        TrainConfig(data_dir=tmp_path, head_init="imagenet1k")
