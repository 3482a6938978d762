from __future__ import annotations

import pytest
import torch

from graftkit import ConfigError, create_backbone, list_backbones
from graftkit.backbones.efficientnet_lite import convert_lukemelas_state_dict, packaged_weights_path


def test_registry_lists_offline_backbones():
    names = {b.name: b.offline for b in list_backbones()}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tiny_cnn"):
        assert names[name] is True


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        create_backbone("efficientnet_lite00")


def test_registering_a_name_twice_is_an_error():
    from graftkit.backbones.registry import register_backbone

    with pytest.raises(ConfigError, match="twice"):
        register_backbone("tiny_cnn", offline=True)(lambda **_: None)


def test_tiny_backbone_stages_compose_to_features():
    backbone = create_backbone("tiny_cnn")
    x = torch.randn(2, 3, 32, 32)
    assert backbone(x).shape == (2, backbone.num_features)
    mid = backbone.forward_stages(x, 0, 2)
    assert torch.allclose(backbone.pool(backbone.forward_stages(mid, 2)), backbone(x))


@pytest.mark.parametrize("variant, size", [(0, 224), (1, 240), (2, 260)])
def test_packaged_weights_load_strictly_into_timm(variant, size):
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    state = torch.load(packaged_weights_path(variant), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_state_dict(state, [len(s) for s in model.blocks])
    model.load_state_dict(converted, strict=True)  # raises on any missing/unexpected key
    backbone = create_backbone(f"efficientnet_lite{variant}")
    assert backbone.image_size == size and backbone.mean == (0.5, 0.5, 0.5)
    # Our staged split computes exactly timm's pooled features.
    model.eval(), backbone.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(backbone(x), model.forward_head(model.forward_features(x), pre_logits=True),
                              atol=1e-5)


def _imagenet_top5(image) -> list[str]:
    from PIL import Image
    from timm.data import ImageNetInfo
    from torchvision import transforms as T

    backbone = create_backbone("efficientnet_lite0").eval()
    state = torch.load(packaged_weights_path(0), map_location="cpu", weights_only=True)
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(backbone.mean, backbone.std)])
    with torch.no_grad():
        logits = fc(backbone(tf(Image.fromarray(image))[None]))[0]
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in logits.topk(5).indices.tolist()]


def test_packaged_weights_are_real_imagenet_weights():
    skimage_data = pytest.importorskip("skimage.data")
    cat_top5 = _imagenet_top5(skimage_data.chelsea())
    assert any("cat" in name for name in cat_top5[:2]), cat_top5
    coffee_top5 = _imagenet_top5(skimage_data.coffee())
    assert any(k in name for name in coffee_top5 for k in ("espresso", "cup")), coffee_top5


def test_random_init_differs_from_pretrained():
    a = create_backbone("efficientnet_lite0", pretrained=True).state_dict()
    b = create_backbone("efficientnet_lite0", pretrained=False).state_dict()
    key = "stages.0.0.weight"
    assert not torch.equal(a[key], b[key])


def test_unknown_timm_name_offline_error_lists_offline_backbones(monkeypatch):
    import timm

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(ConfigError, match="efficientnet_lite0.*--weights FILE"):
        create_backbone("resnet18", pretrained=True)


def test_local_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("tiny_cnn")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_backbone("tiny_cnn", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
