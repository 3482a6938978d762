from __future__ import annotations

import pytest
import torch

from graftkit import create_backbone
from graftkit.engine import fusion
from graftkit.engine.fusion import fold_frozen_batchnorm
from graftkit.heads import Classifier

needs_fused_op = pytest.mark.skipif(not fusion.fused_conv_available(),
                                    reason="this torch build has no oneDNN conv + pointwise op")


def _randomise_bn(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            # Mild, so that a deep random net stays numerically tame (ReLU6 masks do not flip).
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)


@pytest.mark.parametrize("name, size, channels_last", [
    ("tiny_cnn", 32, False), ("efficientnet_lite0", 64, False),
    ("efficientnet_lite0", 64, True),  # asymmetric "same" padding at every stride-2 conv
    ("efficientnet_lite0", 67, True),  # odd sizes: symmetric padding at some of them
])
def test_folding_keeps_outputs_and_gradients(name, size, channels_last, monkeypatch):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = Classifier(create_backbone(name, pretrained=False), 3).eval().to(memory_format=fmt)
    _randomise_bn(model)
    x = torch.randn(2, 3, size, size).to(memory_format=fmt)
    reference = model(x)
    reference.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    pads, fused = [], []
    for name_, log in (("_PadBorder", pads), ("_ConvClamp", fused)):
        real = getattr(fusion, name_).apply
        monkeypatch.setattr(getattr(fusion, name_), "apply",
                            lambda *a, real=real, log=log: log.append(a[1:]) or real(*a))
    with fold_frozen_batchnorm(model) as count:
        folded = model(x)
        folded.sum().backward()
    assert count > 0
    if name == "efficientnet_lite0" and fusion.fused_conv_available():
        assert len(fused) == 33  # every conv + BatchNorm + ReLU6 ran as one kernel
        # at 64 px the stem and the four stride-2 depthwise convs pad asymmetrically; at 67 only one
        assert len(pads) == (5 if size == 64 else 1)
    torch.testing.assert_close(folded, reference, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        scale = grads[n].abs().max().item() + 1e-12
        assert (p.grad - grads[n]).abs().max().item() <= 1e-4 * scale, n
    assert "forward" not in vars(model.backbone.stages[0][0])  # restored on exit


def test_batchnorm_in_training_mode_is_not_folded():
    model = Classifier(create_backbone("tiny_cnn"), 2).train()
    with fold_frozen_batchnorm(model) as count:
        assert count == 0
    model.set_trainable([False, False, True, True], train_bn=True)
    with fold_frozen_batchnorm(model) as count:
        assert count == 2  # the two frozen stages


def test_without_onednn_the_activation_runs_separately(monkeypatch):
    torch.manual_seed(0)
    model = Classifier(create_backbone("efficientnet_lite0", pretrained=False), 3).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    calls = []
    real = fusion._ConvClamp.apply
    monkeypatch.setattr(fusion._ConvClamp, "apply", lambda *a: calls.append(1) or real(*a))
    with torch.backends.mkldnn.flags(enabled=False):
        reference = model(x)
        with fold_frozen_batchnorm(model):
            folded = model(x)
    assert not calls
    torch.testing.assert_close(folded, reference, atol=1e-4, rtol=1e-4)


@needs_fused_op
@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.ReLU6])
def test_fused_conv_activation_matches_for_relu_and_relu6(act):
    from timm.layers.norm_act import BatchNormAct2d

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                BatchNormAct2d(8, act_layer=act, act_kwargs={"inplace": True})).eval()
    _randomise_bn(block)
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last) * 4  # values on both sides of 0 and 6
    reference = block(x)
    reference.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    with fold_frozen_batchnorm(block) as count:
        folded = block(x)
        folded.square().sum().backward()
    assert count == 1 and (reference == 0).any()
    assert act is torch.nn.ReLU or (reference == 6).any()  # both ends of ReLU6 are exercised
    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=1e-5)
    for got, want in zip((p.grad for p in block.parameters()), grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.ReLU6])
def test_reflect_padded_conv_keeps_the_batchnorm_activation(act):
    """A conv with padding_mode != "zeros" takes torch's own padding path; the BatchNormAct2d after it
    is replaced by its activation alone, so the folded conv must still apply it."""
    from timm.layers.norm_act import BatchNormAct2d

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", bias=False),
                                BatchNormAct2d(8, act_layer=act)).eval()
    _randomise_bn(block)
    x = torch.randn(2, 3, 9, 9) * 4
    reference = block(x)
    with fold_frozen_batchnorm(block) as count:
        folded = block(x)
    assert count == 1 and (reference == 0).any() and (folded >= 0).all()
    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=1e-5)


@needs_fused_op
def test_a_failing_fused_op_falls_back_once_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(fusion._FUSED, "failed", False)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(fusion._ConvClamp, "apply", broken)
    torch.manual_seed(0)
    model = Classifier(create_backbone("efficientnet_lite0", pretrained=False), 3).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    with caplog.at_level("WARNING", logger="graftkit"), fold_frozen_batchnorm(model):
        first, second = model(x), model(x)
    assert len(calls) == 1  # tried once, then the plain path for every conv
    assert [r.message for r in caplog.records if "fused" in r.message][0].count("\n") == 0
    assert len([r for r in caplog.records if "fused" in r.message]) == 1
    torch.testing.assert_close(first, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second, reference, atol=1e-4, rtol=1e-4)
