"""Fold frozen BatchNorm into the convolution before it, for the duration of a ``with`` block.

A BatchNorm in inference mode is an affine map, so ``bn(conv(x))`` equals one convolution with
scaled weights and a bias. Computing that folded weight each step costs almost nothing, removes one
full pass over every activation map forward and backward, and still trains the conv weights and the
BatchNorm's affine parameters through it (about 1.4x faster fine-tuning of EfficientNet-Lite on a
CPU). The module tree and state dict are untouched: only the instances' ``forward`` is swapped, and
restored on exit.

Two more things make the same training step cheaper on a CPU (measured in BENCHMARKS.md, P5):
TF-"same" padding of strided convs writes only the pad border instead of zero-filling a whole padded
copy, and its backward hands the gradient on as a view instead of copying it out; the activation
after a folded BatchNorm runs out of place (an in-place ReLU6 costs a hidden copy of every activation
map under autograd).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _conv_kind(conv: nn.Module) -> str | None:
    if type(conv) is nn.Conv2d:
        return "conv2d"
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return "same" if type(conv) is Conv2dSame else None


def _bn_kind(bn: nn.Module) -> str | None:
    if type(bn) is nn.BatchNorm2d:
        return "bn"
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # pragma: no cover
        return None
    return "bnact" if type(bn) is BatchNormAct2d else None


def foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, batchnorm) siblings where the BatchNorm directly follows the conv and is in eval mode."""
    pairs = []
    for module in model.modules():
        children = list(module.children())
        for conv, bn in zip(children, children[1:]):
            if (_conv_kind(conv) and _bn_kind(bn) and not bn.training and bn.track_running_stats
                    and conv.bias is None and "forward" not in vars(conv) and "forward" not in vars(bn)):
                pairs.append((conv, bn))
    return pairs


def same_pad_amounts(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of TensorFlow's "SAME" convolution."""
    amounts = []
    for length, k, s, d in zip(size, kernel, stride, dilation):
        total = max((-(-length // s) - 1) * s + (k - 1) * d + 1 - length, 0)
        amounts += [total // 2, total - total // 2]
    return tuple(amounts)


def _bordered(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An uninitialised padded buffer in ``x``'s memory format with its border zeroed, and its interior."""
    n, c, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, :top].zero_()
    out[:, :, top + h:].zero_()
    out[:, :, top:top + h, :left].zero_()
    out[:, :, top:top + h, left + w:].zero_()
    return out, out[:, :, top:top + h, left:left + w]


def _interior(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, h, left, w = box
    return t[:, :, top:top + h, left:left + w]


class _PadBorder(torch.autograd.Function):
    """Zero padding that writes the interior once and zeroes only the border; backward is a view."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        out, inside = _bordered(x, top, bottom, left, right)
        inside.copy_(x)
        ctx.box = (top, x.shape[2], left, x.shape[3])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _interior(grad, ctx.box), None, None, None, None


class _ClampPad(torch.autograd.Function):
    """``clamp(x, low, high)`` (ReLU, ReLU6) written straight into a zero-bordered buffer: the
    activation and the next convolution's padding in one pass over the activation map."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float, top: int, bottom: int, left: int,
                right: int) -> torch.Tensor:
        out, inside = _bordered(x, top, bottom, left, right)
        torch.clamp(x, low, high, out=inside)
        ctx.box, ctx.bounds = (top, x.shape[2], left, x.shape[3]), (low, high)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        # the clamp's output is inside (low, high) exactly where its input was: the same mask
        grad_x = torch.ops.aten.hardtanh_backward(_interior(grad, ctx.box), _interior(out, ctx.box), *ctx.bounds)
        return grad_x, None, None, None, None, None, None


def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, dilation,
                groups: int) -> torch.Tensor:
    """TF-"same" convolution: the symmetric part of the padding inside the conv, the rest by _PadBorder."""
    top, bottom, left, right = same_pad_amounts(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, dilation)
    sym_h, sym_w = min(top, bottom), min(left, right)
    if (top, bottom, left, right) != (sym_h, sym_h, sym_w, sym_w):
        x = _PadBorder.apply(x, top - sym_h, bottom - sym_h, left - sym_w, right - sym_w)
    return F.conv2d(x, weight, bias, stride, (sym_h, sym_w), dilation, groups)


def _folded_conv_forward(conv: nn.Module, bn: nn.BatchNorm2d, padded: bool = False):
    """``bn(conv(x))`` as one conv; ``padded``: the input already carries the "same" padding."""
    kind = _conv_kind(conv)

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        if kind == "conv2d":
            return conv._conv_forward(x, weight, bias)
        if padded:
            return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)
        return conv2d_same(x, weight, bias, conv.stride, conv.dilation, conv.groups)

    return forward


def _clamp_bounds(bn: nn.Module) -> tuple[float, float] | None:
    """(low, high) when the BatchNorm's activation is a plain clamp (ReLU, ReLU6) with no dropout."""
    if _bn_kind(bn) != "bnact" or not isinstance(bn.drop, nn.Identity):
        return None
    return {nn.ReLU6: (0.0, 6.0), nn.ReLU: (0.0, math.inf)}.get(type(bn.act))


def _bn_without_norm(bn: nn.Module, next_conv: nn.Module | None = None):
    """What is left of a folded BatchNorm: nothing, or its activation (out of place: an in-place
    ReLU6 costs a hidden copy of the activation map under autograd). With ``next_conv``, a "same"
    conv the output feeds, the activation also writes that conv's padding."""
    if _bn_kind(bn) == "bn":
        return lambda x: x
    bounds = _clamp_bounds(bn)
    if next_conv is not None and bounds is not None:
        kernel, stride, dilation = next_conv.kernel_size, next_conv.stride, next_conv.dilation
        return lambda x: _ClampPad.apply(x, *bounds, *same_pad_amounts(tuple(x.shape[-2:]), kernel, stride, dilation))
    if bounds is not None:
        return (lambda x: F.hardtanh(x, 0.0, 6.0)) if bounds[1] == 6.0 else F.relu
    return lambda x: bn.act(bn.drop(x))  # BatchNormAct2d: norm, then drop, then act


@contextlib.contextmanager
def fold_frozen_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every frozen (eval-mode) BatchNorm after a conv is folded into it.

    Yields the number of folded pairs. Set the model's train/eval mode before entering.
    """
    pairs = foldable_pairs(model) if enabled else []
    folded_convs = {id(conv) for conv, _ in pairs}
    feeds: dict[int, nn.Module] = {}  # id(bn) -> the "same" conv right after it, also folded
    for module in model.modules() if pairs else []:
        children = list(module.children())
        for bn, conv in zip(children, children[1:]):
            if id(conv) in folded_convs and _conv_kind(conv) == "same" and _clamp_bounds(bn) is not None:
                feeds[id(bn)] = conv
    prepadded = {id(conv) for conv in feeds.values()}
    for conv, bn in pairs:
        conv.forward = _folded_conv_forward(conv, bn, padded=id(conv) in prepadded)
        bn.forward = _bn_without_norm(bn, feeds.get(id(bn)))
    try:
        yield len(pairs)
    finally:
        for conv, bn in pairs:
            del conv.forward
            del bn.forward
